"""meterd's use of the governance library: the default chain, client keys, tracing, outbound breakers.

The `governance:` config section is governance.GovernanceSettings:
  plugins  - the chain (governance.config format); default below
  tracing  - governance.tracing.TracingSettings for the process's tracer provider (meterd's defaults:
             10 % sampling, no exporter unless an endpoint is configured)
  outbound - {"kafka": {...}, "database": {...}} OutboundSettings for the dependency breakers
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import sqlalchemy.exc

from governance import DependencyUnavailable, Governance, GovernanceSettings, OutboundBreaker, OutboundSettings
from governance.tracing import TracingSettings, setup_tracing
from service.auth import Authenticator, bearer_token, credential_digest
from service.governance_auth import PrincipalKey

# Probes and scrapes must keep answering under overload, and never count against a quota.
_OPS_ROUTES = {"/metrics": {"enabled": False}, "/healthz": {"enabled": False}, "/readyz": {"enabled": False},
               "/debug/profiles*": {"enabled": False}, "/grpc.health.v1.Health/*": {"enabled": False},
               "/grpc.reflection.*": {"enabled": False}}

# A WriteStream is governed per message (service/grpc_writer.py): the stream itself is only
# measured and traced, so one long-lived stream never holds an in-flight slot or a quota unit.
STREAM_RPC = {"bidi_stream /meterd.v1.TrafficWriter/WriteStream": {"enabled": False}}

# Criticality for the adaptive limiter (governance/adaptive/policy.py): under overload exports and
# long scans are shed first, account reads and admin calls next, ingest writes last. Unmatched
# routes are "read". Every variant shares one limiter; each has its own guard rails per route.
ADAPTIVE_PRIORITIES: dict[str, dict[str, Any]] = {
    # Qualified by call type, so neither glob matches the WriteStream RPC itself (left to STREAM_RPC
    # whatever order a config file lists them in).
    "unary /meterd.v1.TrafficWriter/Write": {"priority": "write"},
    "message /meterd.v1.TrafficWriter/WriteStream": {"priority": "write"},
    "POST /v1/traffic": {"priority": "write"},
    "GET /v1/accounts/{account_id}/usage": {"priority": "export"},
}

DEFAULT_PLUGINS: list[dict[str, Any]] = [  # validated into PluginSpecs by GovernanceSettings
    {"type": "metrics"},
    {"type": "tracing"},
    # Authenticate before anything counts per client: quota keys are principals, not header bytes.
    {"type": "service.governance_auth:PrincipalKey", "routes": {**_OPS_ROUTES, **STREAM_RPC}},
    {"type": "adaptive", "routes": {**_OPS_ROUTES, **STREAM_RPC, **ADAPTIVE_PRIORITIES}},
    # Generous per-client defaults: a guard against one runaway client, not a billing limit.
    {"type": "quota", "limit": "1000/second;30000/minute", "routes": {**_OPS_ROUTES, **STREAM_RPC}},
    {"type": "breaker", "routes": {**_OPS_ROUTES, **STREAM_RPC}},
]


def _key_of(authorization: str | bytes) -> str | None:
    """The fallback key when no `auth` plugin is in the chain: a digest of the normalised bearer
    token (scheme case and spacing do not matter), never the raw header bytes."""
    token = bearer_token(authorization.decode("latin-1") if isinstance(authorization, bytes) else authorization)
    return None if token is None else "cred:" + credential_digest(token).hex()[:16]


def http_client_key(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            key = _key_of(value)
            if key is not None:
                return key
            break
    client = scope.get("client")
    return f"ip:{client[0]}" if client else None


def grpc_client_key(handler_call_details: Any) -> str | None:
    for key, value in handler_call_details.invocation_metadata or ():
        if key == "authorization":
            return _key_of(value)
    return None


def bind_authenticator(gov: Governance, auth: Authenticator) -> None:
    """Hand the Authenticator to every `auth` plugin instance (route variants included); the first
    one's budget becomes the one the paths the chain does not govern (WriteStream, profiles) charge."""
    bound = False
    for plugin in gov.plugins:
        if isinstance(plugin, PrincipalKey):
            plugin.bind(auth)
            if not bound:
                auth.budget, bound = plugin.budget, True


def build_governance(cfg: GovernanceSettings, *, registry: Any, service_name: str) -> Governance:
    given = cfg.tracing.model_dump(exclude_unset=True) if cfg.tracing is not None else {}
    if "exporter" not in given and not given.get("endpoint") and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        given["exporter"] = "none"  # no collector configured: sample and propagate, export nothing
    given.setdefault("ratio", 0.1)
    setup_tracing(TracingSettings(**given), service_name=service_name)
    plugins = cfg.plugins if cfg.plugins is not None else DEFAULT_PLUGINS
    return Governance.from_config(GovernanceSettings(plugins=plugins, overrides=cfg.overrides), registry=registry,
                                  service_name=service_name)


def outbound(gov: Governance, name: str, cfg: GovernanceSettings, **defaults: Any) -> OutboundBreaker:
    """The breaker for dependency `name`: meterd's defaults, then what the config sets."""
    exclude = defaults.pop("exclude", ())
    configured = cfg.outbound.get(name)
    given = configured.model_dump(exclude_unset=True) if configured is not None else {}
    return gov.outbound_breaker(name, OutboundSettings(**{**defaults, **given}), exclude=exclude)


class GuardedRepository:
    """Every coroutine method of the wrapped repository runs through the database breaker, so a dead
    database costs one fast DependencyUnavailable instead of a pool timeout per request."""

    def __init__(self, repo: Any, breaker: OutboundBreaker) -> None:
        self._repo = repo
        self._breaker = breaker

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._repo, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return await self._breaker.call(attr, *args, **kwargs)
            except (OSError, TimeoutError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
                # The database is unreachable but the breaker has not opened yet (it needs fail_max
                # failures): the same fact as an open breaker, so callers answer UNAVAILABLE/503.
                raise DependencyUnavailable(self._breaker.name, 1.0) from exc
            except sqlalchemy.exc.DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                # The server went away mid-statement (killed, restarted): unavailable, not unknown.
                raise DependencyUnavailable(self._breaker.name, 1.0) from exc

        guarded.__name__ = name
        setattr(self, name, guarded)  # cache: later lookups skip __getattr__
        return guarded
