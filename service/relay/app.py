"""The relay's HTTP surface: Alertmanager webhook in, health and metrics out.

Status codes are chosen for Alertmanager, which retries a webhook only on 5xx:
200 delivered, 202 queued (stored; the relay delivers it later, also after a restart), 503 retry,
424 DingTalk refused for good (retrying cannot help), 400 bad payload, 401 missing or wrong
credentials, 404 unknown robot, 408 body too slow, 413 body too large.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.api.bodies import read_body
from service.api.problems import Problem
from service.credential_gate import PeerBudget
from service.relay.auth import WebhookAuth
from service.relay.batching import Outcome
from service.relay.client import DingTalkClient
from service.relay.dispatcher import RobotDispatcher
from service.relay.metrics import UNKNOWN_ROBOT, RelayMetrics
from service.relay.payload import WebhookMessage
from service.relay.render import Renderer
from service.relay.settings import RelaySettings
from service.relay.store import NotificationStore

log = logging.getLogger("meterd.relay")

PROBLEM_BASE = "urn:meterd:problem:relay:"


def problem(status: int, kind: str, title: str, detail: str, headers: dict[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    """RFC 9457 problem details."""
    body = {"type": PROBLEM_BASE + kind, "title": title, "status": status, "detail": detail, **extra}
    headers = dict(headers or {})
    if status == 503:
        headers["Retry-After"] = "5"
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


def resolve_robot(settings: RelaySettings, message: WebhookMessage) -> str | None:
    """Robot for a notification posted to `/alerts`: receiver, then severity, then default."""
    routes = settings.routes
    if message.receiver in routes.receivers:
        return routes.receivers[message.receiver]
    if (severity := message.severity) in routes.severities:
        return routes.severities[severity]
    if routes.default is not None:
        return routes.default
    if len(settings.robots) == 1:
        return next(iter(settings.robots))
    return None


class _Relay:
    def __init__(
        self,
        settings: RelaySettings,
        registry: CollectorRegistry,
        transport: httpx.AsyncBaseTransport | None,
        window_s: float,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = RelayMetrics.create(registry, settings.robots)
        self.auth = WebhookAuth(settings.auth)
        self.failed_checks = PeerBudget(settings.auth.failed_limit, "relay_auth")
        self.store = NotificationStore(settings.data_dir) if settings.data_dir is not None else None
        self.http = httpx.AsyncClient(timeout=settings.send_timeout_s, transport=transport)
        client = DingTalkClient(self.http)
        renderer = Renderer(settings)
        self.dispatchers = {
            name: RobotDispatcher(
                name,
                robot,
                settings,
                renderer=renderer,
                client=client,
                metrics=self.metrics,
                window_s=window_s,
                store=self.store,
            )
            for name, robot in settings.robots.items()
        }
        self.closing = False

    async def alerts(self, request: Request) -> Response:
        peer = request.client.host if request.client else "unknown"
        refused = self.failed_checks.refusal(peer) if self.auth.enabled else None
        if refused is not None:  # this address failed too often: no credential is compared (N21)
            self.metrics.notifications.labels(UNKNOWN_ROBOT, "unauthorized").inc()
            return problem(429, "rate-limited", "Too Many Requests",
                           "too many failed credential checks from this address; retry later",
                           headers={"Retry-After": str(int(refused.retry_after))})
        if not self.auth.allows(request.headers.get("authorization")):
            # Before anything else: an unauthenticated caller learns nothing, not even robot names.
            self.failed_checks.charge(peer)
            self.metrics.notifications.labels(UNKNOWN_ROBOT, "unauthorized").inc()
            return problem(401, "unauthorized", "Unauthorized", "missing or invalid credentials",
                           headers={"WWW-Authenticate": self.auth.challenge})
        robot = request.path_params.get("robot")
        if robot is not None and robot not in self.dispatchers:
            self._invalid(UNKNOWN_ROBOT)
            return problem(404, "unknown-robot", "Unknown robot", f"no robot named {robot!r} is configured")
        try:
            body = await read_body(request, self.settings.max_body_bytes, self.settings.body_timeout_s)
        except Problem as exc:  # 413 or 408; close, so the rest of the body is never read
            self._invalid(robot)
            kind = "too-large" if exc.status == 413 else "body-timeout"
            return problem(exc.status, kind, exc.title, exc.detail, headers={"Connection": "close"})
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            self._invalid(robot)
            return problem(400, "invalid-json", "Invalid JSON", f"the body is not JSON: {exc}")
        if not isinstance(data, dict) or data.get("version") != "4":
            self._invalid(robot)
            version = data.get("version") if isinstance(data, dict) else None
            return problem(
                400,
                "unsupported-version",
                "Unsupported webhook payload",
                f'expected an Alertmanager webhook payload with version "4", got {version!r}',
            )
        try:
            message = WebhookMessage.model_validate(data)
        except ValidationError as exc:
            self._invalid(robot)
            errors = [
                {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
                for err in exc.errors(include_url=False, include_input=False)
            ]
            return problem(
                400,
                "invalid-payload",
                "Invalid webhook payload",
                "the payload is not a valid Alertmanager webhook (version 4)",
                errors=errors,
            )
        if robot is None:
            robot = resolve_robot(self.settings, message)
            if robot is None:
                self._invalid(UNKNOWN_ROBOT)
                return problem(
                    404,
                    "no-route",
                    "No robot for this notification",
                    f"no route matches receiver {message.receiver!r} or severity {message.severity!r}",
                )
        outcome, detail = await self.dispatchers[robot].submit(message)
        return _respond(robot, outcome, detail)

    def _invalid(self, robot: str | None) -> None:
        self.metrics.notifications.labels(robot or UNKNOWN_ROBOT, "invalid").inc()

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        pending = {name: d.pending for name, d in self.dispatchers.items()}
        if self.closing:
            return JSONResponse({"status": "shutting down", "pending": pending}, status_code=503)
        if not self.dispatchers:
            return JSONResponse({"status": "no robots configured", "pending": pending}, status_code=503)
        return JSONResponse({"status": "ready", "pending": pending})

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self.store is not None:
            rows = self.store.load()
            for name, dispatcher in self.dispatchers.items():
                dispatcher.restore([r for r in rows if r.robot == name])
            orphans = sorted({r.robot for r in rows} - set(self.dispatchers))
            if orphans:  # kept, not deleted: the robot may come back with the next config fix
                log.error("relay: stored notifications for robots no longer configured: %s", ", ".join(orphans))
        try:
            yield
        finally:
            self.closing = True
            for dispatcher in self.dispatchers.values():
                await dispatcher.aclose()
            await self.http.aclose()
            if self.store is not None:
                self.store.close()


def _respond(robot: str, outcome: Outcome, detail: str) -> Response:
    if outcome is Outcome.DELIVERED:
        return JSONResponse({"status": "delivered", "robot": robot})
    if outcome is Outcome.QUEUED:
        return JSONResponse({"status": "queued", "robot": robot, "detail": detail}, status_code=202)
    if outcome is Outcome.REJECTED:
        return problem(
            424,
            "dingtalk-rejected",
            "DingTalk rejected the message",
            f"robot {robot!r}: {detail}; retrying will not help",
            robot=robot,
        )
    if outcome is Outcome.OVERLOADED:
        return problem(503, "overloaded", "Relay overloaded", f"robot {robot!r}: {detail}", robot=robot)
    return problem(503, "retry", "Delivery failed, retry", f"robot {robot!r}: {detail}", robot=robot)


def build_relay_app(
    settings: RelaySettings,
    *,
    registry: CollectorRegistry,
    transport: httpx.AsyncBaseTransport | None = None,
    window_s: float = 60.0,
) -> Starlette:
    """The relay as an ASGI app. `transport` and `window_s` exist for tests (fake DingTalk, short
    rate window); production uses the defaults."""
    relay = _Relay(settings, registry, transport, window_s)
    app = Starlette(
        routes=[
            Route("/alerts", relay.alerts, methods=["POST"]),
            Route("/alerts/{robot}", relay.alerts, methods=["POST"]),
            Route("/metrics", relay.metrics_endpoint, methods=["GET"]),
            Route("/healthz", relay.healthz, methods=["GET"]),
            Route("/readyz", relay.readyz, methods=["GET"]),
        ],
        lifespan=relay.lifespan,
    )
    app.state.relay = relay
    return app
