"""A stand-in for DingTalk's custom-robot API that checks what the real one checks.

It verifies the signature the way DingTalk documents it (timestamp within an hour, sign decoded
once from the query string equals base64(HMAC-SHA256(secret, timestamp + "\\n" + secret))), the
body limit (20,000 bytes) and the rate limit (20 messages in any 60 s), answering with DingTalk's
error codes. Every breach is also recorded in `violations`, so a test can assert there were none
even where the relay would have hidden an error by retrying.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ROBOT_PATH = "/robot/send"


@dataclass
class Received:
    at: float  # time.monotonic() on arrival
    body: dict[str, Any]
    size: int
    query: str

    @property
    def text(self) -> str:
        return self.body["markdown"]["text"]

    @property
    def title(self) -> str:
        return self.body["markdown"]["title"]


@dataclass
class FakeDingTalk:
    secret: str
    access_token: str = "test-token-0123456789"
    max_per_minute: int = 20
    window_s: float = 60.0
    max_bytes: int = 20_000
    messages: list[Received] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    # Canned answers for the next requests, e.g. (200, {"errcode": 130101, ...}) or (500, {}).
    scripted: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    requests: int = 0

    def __post_init__(self) -> None:
        self.app = Starlette(routes=[Route(ROBOT_PATH, self._send, methods=["POST"])])
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.base_url = "http://fake-dingtalk"

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}{ROBOT_PATH}?access_token={self.access_token}"

    def expected_sign(self, timestamp: str) -> str:
        digest = hmac.new(self.secret.encode(), f"{timestamp}\n{self.secret}".encode(), hashlib.sha256).digest()
        return base64.b64encode(digest).decode()

    async def _send(self, request: Request) -> JSONResponse:
        self.requests += 1
        now = time.monotonic()
        raw = await request.body()
        query = request.scope["query_string"].decode("latin-1")
        # parse_qs decodes exactly once, as DingTalk's server does.
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        if params.get("access_token") != self.access_token:
            return self._error("token", 300001, "token is not exist")
        timestamp = params.get("timestamp", "")
        sign = params.get("sign", "")
        if not timestamp.isdigit() or abs(time.time() * 1000 - int(timestamp)) > 3600_000:
            return self._error(f"bad timestamp {timestamp!r}", 310000, "invalid timestamp")
        if not hmac.compare_digest(sign, self.expected_sign(timestamp)):
            return self._error(f"sign mismatch: got {sign!r}", 310000, "sign not match")
        if len(raw) > self.max_bytes:
            return self._error(f"body of {len(raw)} bytes", 460101, "message too long")
        try:
            body = json.loads(raw.decode("utf-8"))
            assert body["msgtype"] == "markdown"
            assert isinstance(body["markdown"]["title"], str) and isinstance(body["markdown"]["text"], str)
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            return self._error(f"malformed body: {exc!r}", 40035, "invalid message")
        if self.scripted:
            status, answer = self.scripted.popleft()
            return JSONResponse(answer, status_code=status)
        recent = [m for m in self.messages if m.at > now - self.window_s]
        if len(recent) >= self.max_per_minute:
            return self._error(f"rate: {len(recent) + 1} messages within {self.window_s}s", 130101, "send too fast")
        self.messages.append(Received(now, body, len(raw), query))
        return JSONResponse({"errcode": 0, "errmsg": "ok"})

    def _error(self, violation: str, errcode: int, errmsg: str) -> JSONResponse:
        self.violations.append(violation)
        return JSONResponse({"errcode": errcode, "errmsg": errmsg})

    def max_in_window(self) -> int:
        """Largest number of accepted messages within any window_s span."""
        times = sorted(m.at for m in self.messages)
        best, start = 0, 0
        for end, t in enumerate(times):
            while times[start] <= t - self.window_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    async def start(self, port: int = 0) -> str:
        """Serve on a loopback port (real HTTP; random unless given); returns the base URL."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
