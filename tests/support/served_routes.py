"""What a live meterd process serves: every HTTP (method, path) and every gRPC method.

A real `meterd` started with `introspection_env(env, out)` loads tests/support/introspect/
sitecustomize.py, which calls `install_recorders(out)` before meterd's own code runs. The recorders
wrap `HttpServer.__init__` (each ASGI app meterd serves, under the server's name: "api" or "admin")
and the grpc.aio server's handler registration, and rewrite `out` as JSON after each event. Tests
then compare that surface with their tables, so a route added anywhere in process.py (extra routes,
mounts, middleware-wrapped apps, new gRPC services) shows up without anyone updating a list.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INTROSPECT_ENV = "TEST_METERD_INTROSPECT"
_SITE_DIR = Path(__file__).resolve().parent / "introspect"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_MAX_WRAPPERS = 32

Endpoint = tuple[str, str]  # (METHOD, path template); "*" = any method, "WEBSOCKET" for websocket routes


def _routes_of(app: Any) -> list[Any] | None:
    """The route list under `app`, looking through ASGI middleware that keeps the next app in `.app`."""
    for _ in range(_MAX_WRAPPERS):
        routes = getattr(app, "routes", None)
        if isinstance(routes, list | tuple):
            return list(routes)
        nxt = getattr(app, "app", None) or getattr(app, "_app", None)
        if nxt is None or nxt is app:
            return None
        app = nxt
    return None


def flatten(app: Any, prefix: str = "") -> list[Endpoint]:
    """Every (method, full path) an ASGI app routes; an app whose routes cannot be seen counts as
    one catch-all endpoint `("*", prefix + "/{path:path}")`, so it still needs a matrix row."""
    from starlette.routing import Host, Mount, Route, WebSocketRoute

    routes = _routes_of(app)
    if routes is None:
        return [("*", prefix + "/{path:path}")]
    out: list[Endpoint] = []
    for route in routes:
        if isinstance(route, Route):
            methods = set(route.methods or {"*"})
            if "GET" in methods:
                methods.discard("HEAD")  # Starlette adds HEAD to every GET route; same handler
            # path_format: the template without convertors ({node_id:path} -> {node_id}), as OpenAPI writes it
            out.extend((m, prefix + route.path_format) for m in sorted(methods))
        elif isinstance(route, Mount):
            out.extend(flatten(route.app, prefix + route.path))
        elif isinstance(route, Host):
            out.extend(flatten(route.app, prefix))
        elif isinstance(route, WebSocketRoute):
            out.append(("WEBSOCKET", prefix + route.path))
        else:
            out.append(("*", f"{prefix}<{type(route).__name__}>"))
    return sorted(set(out))


# -- recorders (run inside the meterd process) --------------------------------------------------
_state: dict[str, Any] = {"http": {}, "grpc_methods": [], "grpc_generic_services": []}
_lock = threading.Lock()


def _dump(out: str) -> None:
    tmp = f"{out}.tmp"
    with open(tmp, "w") as f:
        json.dump(_state, f, indent=1, sort_keys=True)
    os.replace(tmp, out)


def install_recorders(out: str) -> None:
    import grpc.aio._server as aio_server

    from service.runtime import http_server

    original_init = http_server.HttpServer.__init__

    def recording_init(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, app, *args, **kwargs)
        with _lock:
            _state["http"][kwargs.get("name", "?")] = [list(e) for e in flatten(app)]
            _dump(out)

    http_server.HttpServer.__init__ = recording_init  # type: ignore[method-assign]

    server_cls = aio_server.Server
    original_registered = server_cls.add_registered_method_handlers
    original_generic = server_cls.add_generic_rpc_handlers

    def recording_registered(self: Any, service_name: str, method_handlers: dict[str, Any]) -> None:
        with _lock:
            _state["grpc_methods"].extend(f"/{service_name}/{m}" for m in method_handlers)
            _dump(out)
        original_registered(self, service_name, method_handlers)

    def recording_generic(self: Any, handlers: Any) -> None:
        handlers = list(handlers)
        with _lock:
            for h in handlers:
                name = h.service_name() if hasattr(h, "service_name") else f"<opaque {type(h).__name__}>"
                _state["grpc_generic_services"].append(name)
            _dump(out)
        original_generic(self, handlers)

    server_cls.add_registered_method_handlers = recording_registered  # type: ignore[method-assign]
    server_cls.add_generic_rpc_handlers = recording_generic  # type: ignore[method-assign]


# -- the test side ------------------------------------------------------------------------------
def introspection_env(env: dict[str, str], out: Path) -> dict[str, str]:
    """A copy of a meterd environment that makes the process record what it serves into `out`."""
    env = dict(env)
    paths = [str(_SITE_DIR), str(_REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env[INTROSPECT_ENV] = str(out)
    return env


@dataclass
class ServedSurface:
    http: dict[str, list[Endpoint]] = field(default_factory=dict)  # server name ("api", "admin") -> endpoints
    grpc_methods: list[str] = field(default_factory=list)  # "/package.Service/Method"
    grpc_generic_services: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> ServedSurface:
        data = json.loads(path.read_text())
        return cls(http={k: [(m, p) for m, p in v] for k, v in data["http"].items()},
                   grpc_methods=sorted(set(data["grpc_methods"])),
                   grpc_generic_services=sorted(set(data["grpc_generic_services"])))

    def unlisted_grpc_services(self) -> list[str]:
        """Services registered only through a generic handler: their methods cannot be enumerated."""
        listed = {m.split("/")[1] for m in self.grpc_methods}
        return [s for s in self.grpc_generic_services if s not in listed]
