"""Real webhook receivers on loopback for the dispatcher tests: a polite one, one that answers a huge
body, one that drips its answer a byte at a time. Each runs in a thread on its own socket."""

from __future__ import annotations

import socket
import threading
import time


class RawReceiver:
    """Accepts connections, reads one request, then calls `answer(conn)`; records what it did."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.requests: list[bytes] = []
        self.headers: list[dict[str, str]] = []  # lower-cased names
        self.started = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(body) < length:
                body += conn.recv(65536)
            self.headers.append({k.strip().lower(): v.strip() for k, _, v in
                                 (line.decode().partition(":") for line in head.split(b"\r\n")[1:])})
            self.requests.append(body)
            self.started.set()
            try:
                self.answer(conn)
            except OSError:
                pass  # the client hung up: what the tests want

    def answer(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


class HugeReceiver(RawReceiver):
    """Answers 200 with a body of `size` bytes, sent as fast as the client takes it."""

    def __init__(self, size: int) -> None:
        self.size, self.sent = size, 0
        super().__init__()

    def answer(self, conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {self.size}\r\n\r\n".encode())
        chunk = b"x" * (1 << 20)
        while self.sent < self.size:
            n = min(len(chunk), self.size - self.sent)
            conn.sendall(chunk[:n])
            self.sent += n


class DripReceiver(RawReceiver):
    """Answers 200 and then one body byte every `interval` seconds, for at most `limit` seconds:
    every read succeeds quickly, so only a total deadline ends the attempt."""

    def __init__(self, interval: float = 0.5, limit: float = 60.0) -> None:
        self.interval, self.limit = interval, limit
        self.hung_up_after: float | None = None
        super().__init__()

    def answer(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < self.limit:
                conn.sendall(b"x")
                time.sleep(self.interval)
        finally:
            self.hung_up_after = time.monotonic() - t0
