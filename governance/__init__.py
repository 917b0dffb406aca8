"""Pluggable request governance for ASGI and grpc.aio services.

    gov = Governance.from_config(cfg)                  # cfg: dict (see governance.config) or None
    app = gov.asgi(starlette_app, client_key=...)      # pure-ASGI middleware
    server = grpc.aio.server(interceptors=[gov.grpc_interceptor(client_key=...)])
    kafka = gov.outbound_breaker("kafka", fail_max=5, reset_timeout=10)
    ...
    await gov.aclose()

The same plugin instances govern both transports. Never imports the host application.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from governance.config import GovernanceConfigError, build_chain
from governance.core import (
    CANCELLED,
    FAILURE,
    REJECTED,
    SUCCESS,
    Call,
    Chain,
    Outcome,
    Plugin,
    Rejection,
)
from governance.outbound import DependencyUnavailable, OutboundBreaker, OutboundSettings
from governance.plugins import PluginContext
from governance.plugins.metrics import DecisionMetrics

__all__ = [
    "Governance", "Call", "Outcome", "Plugin", "Rejection", "Chain", "DependencyUnavailable",
    "OutboundBreaker", "GovernanceConfigError", "SUCCESS", "FAILURE", "REJECTED", "CANCELLED",
]


class Governance:
    def __init__(self, chain: Chain, instances: list[Any], ctx: PluginContext) -> None:
        self.chain = chain
        self.plugins = instances
        self.ctx = ctx
        self._breakers: dict[str, OutboundBreaker] = {}

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None, *, registry: CollectorRegistry = REGISTRY,
                    service_name: str = "meterd", tracer_provider: Any = None) -> Governance:
        """Build the chain. `cfg=None` means metrics, tracing, adaptive and breaker with defaults.

        `tracer_provider` is for hosts/tests that keep their own provider instead of the global one.
        """
        ctx = PluginContext(registry=registry, service_name=service_name, tracer_provider=tracer_provider)
        decisions = DecisionMetrics(ctx)
        chain, instances = build_chain(cfg, ctx, on_reject=decisions.on_reject)
        return cls(chain, instances, ctx)

    def plugin(self, name: str) -> Any:
        """The first configured plugin instance called `name` (e.g. "adaptive"), for inspection."""
        for p in self.plugins:
            if getattr(p, "name", None) == name:
                return p
        raise KeyError(name)

    def asgi(self, app: Any, *, client_key: Callable[[Any], str | None] | None = None,
             route_resolver: Callable[[Any], str] | None = None) -> Any:
        from governance.asgi import GovernanceMiddleware

        return GovernanceMiddleware(app, self.chain, client_key=client_key, route_resolver=route_resolver)

    def grpc_interceptor(self, client_key: Callable[[Any], str | None] | None = None) -> Any:
        from governance.grpc_aio import GovernanceInterceptor

        return GovernanceInterceptor(self.chain, client_key=client_key)

    def outbound_breaker(self, name: str, **settings: Any) -> OutboundBreaker:
        """One breaker per dependency name (asking twice returns the same breaker)."""
        existing = self._breakers.get(name)
        if existing is not None:
            return existing
        exclude = settings.pop("exclude", ())
        try:
            parsed = OutboundSettings(**settings)
        except Exception as exc:
            raise GovernanceConfigError(f"outbound_breaker({name!r}): {exc}") from exc
        breaker = self._breakers[name] = OutboundBreaker(name, parsed, registry=self.ctx.registry,
                                                         exclude=exclude)
        return breaker

    async def aclose(self) -> None:
        for plugin in self.plugins:
            close = getattr(plugin, "aclose", None)
            if close is not None:
                await close()
