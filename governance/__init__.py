"""Pluggable request governance for ASGI and grpc.aio services.

    gov = Governance.from_config(settings)             # GovernanceSettings, a dict of that shape, or None
    app = gov.asgi(starlette_app, client_key=...)      # pure-ASGI middleware
    server = grpc.aio.server(interceptors=[gov.grpc_interceptor(client_key=...)])
    kafka = gov.outbound_breaker("kafka", fail_max=5, reset_timeout=10)
    ...
    await gov.aclose()

The same plugin instances govern both transports. See governance/README.md for the plugin protocol.
Never imports the host application.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from pydantic import ValidationError

from governance.config import (
    DEFAULT_PLUGINS,
    GovernanceConfigError,
    GovernanceSettings,
    PluginSpec,
    apply_overrides,
    build_chain,
    explain,
)
from governance.core import (
    CANCELLED,
    FAILURE,
    NOOP,
    REJECTED,
    SUCCESS,
    AnyPlugin,
    AsyncPlugin,
    Call,
    Chain,
    Outcome,
    OutcomeKind,
    Plugin,
    Rejection,
    Token,
)
from governance.outbound import DependencyUnavailable, OutboundBreaker, OutboundSettings
from governance.plugins import PluginContext
from governance.plugins.metrics import DecisionMetrics

__all__ = [
    "Governance", "GovernanceSettings", "PluginSpec", "Call", "Outcome", "OutcomeKind", "Plugin", "AsyncPlugin",
    "Token", "NOOP", "Rejection", "Chain", "DependencyUnavailable", "OutboundBreaker", "OutboundSettings",
    "GovernanceConfigError", "SUCCESS", "FAILURE", "REJECTED", "CANCELLED",
]


class Governance:
    def __init__(self, chain: Chain, instances: list[AnyPlugin], ctx: PluginContext) -> None:
        self.chain = chain
        self.plugins = instances
        self.ctx = ctx
        self._breakers: dict[str, OutboundBreaker] = {}

    @classmethod
    def from_config(cls, cfg: GovernanceSettings | dict[str, Any] | None, *, registry: CollectorRegistry = REGISTRY,
                    service_name: str = "meterd", tracer_provider: Any = None) -> Governance:
        """Build the chain. No plugins given: metrics, tracing, adaptive and breaker with defaults.

        `tracer_provider` is for hosts/tests that keep their own provider instead of the global one.
        """
        if not isinstance(cfg, GovernanceSettings):
            if cfg is not None and not isinstance(cfg, dict):
                raise GovernanceConfigError(
                    f"governance config must be a mapping with a 'plugins' list, got {type(cfg).__name__}")
            try:
                cfg = GovernanceSettings.model_validate(cfg or {})
            except ValidationError as exc:
                raise explain("", exc) from exc
        ctx = PluginContext(registry=registry, service_name=service_name, tracer_provider=tracer_provider)
        plugins = cfg.plugins if cfg.plugins is not None else DEFAULT_PLUGINS
        chain, instances = build_chain(apply_overrides(plugins, cfg.overrides), ctx,
                                       on_reject=DecisionMetrics(ctx).on_reject)
        return cls(chain, instances, ctx)

    def plugin(self, name: str) -> AnyPlugin:
        """The first configured plugin instance called `name` (e.g. "adaptive"), for inspection."""
        for p in self.plugins:
            if p.name == name:
                return p
        raise KeyError(name)

    def asgi(self, app: Any, *, client_key: Callable[[Any], str | None] | None = None,
             route_resolver: Callable[[Any], str] | None = None) -> Any:
        from governance.asgi import GovernanceMiddleware

        return GovernanceMiddleware(app, self.chain, client_key=client_key, route_resolver=route_resolver)

    def grpc_interceptor(self, client_key: Callable[[Any], str | None] | None = None) -> Any:
        from governance.grpc_aio import GovernanceInterceptor

        return GovernanceInterceptor(self.chain, client_key=client_key)

    def outbound_breaker(self, name: str, settings: OutboundSettings | None = None, *,
                         exclude: Iterable[type[BaseException]] = (), **fields: Any) -> OutboundBreaker:
        """One breaker per dependency name (asking twice returns the same breaker)."""
        existing = self._breakers.get(name)
        if existing is not None:
            return existing
        try:
            parsed = settings or OutboundSettings(**fields)
        except ValidationError as exc:
            raise explain(f"outbound_breaker({name!r})", exc) from exc
        breaker = self._breakers[name] = OutboundBreaker(name, parsed, registry=self.ctx.registry, exclude=exclude)
        return breaker

    async def aclose(self) -> None:
        for close in self.ctx.closers:
            await close()
        self.ctx.closers.clear()
