"""Build a `Chain` from a plain dict (YAML/JSON-shaped).

    {"plugins": [
        {"type": "metrics"},
        {"type": "tracing", "ratio": 0.1},
        {"type": "adaptive", "routes": {"/metrics": {"enabled": False}, "/healthz": {"enabled": False}}},
        {"type": "quota", "limit": "100/second;5000/minute",
         "routes": {"POST /v1/traffic": {"limit": "20/second"}}},
        {"type": "breaker"},
        {"type": "mypkg.plugins:AuditPlugin", "settings": {"level": 2}},
    ]}

Plugin settings go inline or under "settings". `routes` maps a glob, matched against the route
("/v1/accounts/{id}", "/meterd.v1.TrafficWriter/Write") and against "METHOD route"
("POST /v1/traffic"), to overrides; the first matching glob wins. `{"enabled": false}` removes the
plugin for those routes; other keys make a route variant of the plugin with merged settings.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from governance.core import Chain, Plugin
from governance.plugins import PluginContext


class GovernanceConfigError(ValueError):
    """Invalid governance configuration; the message starts with the offending key."""


def _builtin(type_name: str) -> Any:
    # Imported lazily: a service that never enables tracing does not pay for importing the SDK.
    if type_name == "metrics":
        from governance.plugins.metrics import MetricsPlugin
        return MetricsPlugin
    if type_name == "tracing":
        from governance.plugins.tracing import TracingPlugin
        return TracingPlugin
    if type_name == "adaptive":
        from governance.plugins.adaptive import AdaptivePlugin
        return AdaptivePlugin
    if type_name == "quota":
        from governance.plugins.quota import QuotaPlugin
        return QuotaPlugin
    if type_name == "breaker":
        from governance.plugins.breaker import BreakerPlugin
        return BreakerPlugin
    return None


BUILTIN_TYPES = ("metrics", "tracing", "adaptive", "quota", "breaker")
DEFAULT_CONFIG: dict[str, Any] = {
    "plugins": [{"type": "metrics"}, {"type": "tracing"}, {"type": "adaptive"}, {"type": "breaker"}]
}


class PluginSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    enabled: bool = True
    settings: dict[str, Any] = Field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def merged_settings(self) -> dict[str, Any]:
        return {**self.settings, **(self.model_extra or {})}


class GovernanceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plugins: list[PluginSpec] = Field(default_factory=list)


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _explain(prefix: str, exc: ValidationError) -> GovernanceConfigError:
    parts = []
    for err in exc.errors():
        key = _where(tuple(err.get("loc", ())))
        parts.append(f"{prefix}{'.' + key if key else ''}: {err.get('msg')}")
    return GovernanceConfigError("; ".join(parts))


def load_class(path: str, where: str) -> type:
    """"pkg.mod:Class" -> the class, with errors that say which config key was wrong."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise GovernanceConfigError(
            f"{where}: unknown plugin type {path!r}; use one of {', '.join(BUILTIN_TYPES)} or 'pkg.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GovernanceConfigError(f"{where}: cannot import module {module_name!r}: {exc}") from exc
    obj = module
    for name in attr.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            raise GovernanceConfigError(f"{where}: module {module_name!r} has no attribute {attr!r}")
    if not isinstance(obj, type):
        raise GovernanceConfigError(f"{where}: {path!r} is not a class")
    return obj


def _check_plugin(plugin: Any, where: str) -> Plugin:
    for hook in ("before", "after"):
        fn = getattr(plugin, hook, None)
        if fn is None or not inspect.iscoroutinefunction(fn):
            raise GovernanceConfigError(f"{where}: plugin {type(plugin).__name__} needs `async def {hook}(...)`")
    if not getattr(plugin, "name", None):
        try:
            plugin.name = type(plugin).__name__
        except AttributeError:
            pass
    return plugin


def _instantiate(factory: type, settings: dict[str, Any], ctx: PluginContext, where: str) -> Any:
    try:
        if hasattr(factory, "from_config"):
            return factory.from_config(settings, ctx)
        return factory(**settings)
    except ValidationError as exc:
        raise _explain(where, exc) from exc
    except TypeError as exc:
        raise GovernanceConfigError(f"{where}: bad settings for {factory.__name__}: {exc}") from exc
    except (ValueError, KeyError) as exc:
        raise GovernanceConfigError(f"{where}: {exc}") from exc


def _derive(base: Any, factory: type, settings: dict[str, Any], overrides: dict[str, Any], label: str,
            ctx: PluginContext, where: str) -> Any:
    if hasattr(base, "derive"):
        try:
            return base.derive(overrides, label)
        except ValidationError as exc:
            raise _explain(where, exc) from exc
        except (TypeError, ValueError) as exc:
            raise GovernanceConfigError(f"{where}: {exc}") from exc
    return _instantiate(factory, {**settings, **overrides}, ctx, where)


RouteTable = list[tuple[Any, list[tuple[str, Any]]]]  # (base plugin, [(glob, variant or None)])


def build_chain(cfg: dict[str, Any] | None, ctx: PluginContext,
                on_reject: Callable[..., None] | None = None) -> tuple[Chain, list[Any]]:
    """The chain and every distinct plugin instance (for shutdown)."""
    raw = DEFAULT_CONFIG if cfg is None else cfg
    if not isinstance(raw, dict):
        raise GovernanceConfigError(
            f"governance config must be a mapping with a 'plugins' list, got {type(raw).__name__}")
    try:
        parsed = GovernanceConfig(**raw)
    except ValidationError as exc:
        raise _explain("", exc) from exc

    table: RouteTable = []
    instances: list[Any] = []
    for idx, spec in enumerate(parsed.plugins):
        where = f"plugins[{idx}]"
        if not spec.enabled:
            continue
        factory = _builtin(spec.type) or load_class(spec.type, f"{where}.type")
        settings = spec.merged_settings()
        base = _check_plugin(_instantiate(factory, settings, ctx, where), where)
        instances.append(base)
        variants: list[tuple[str, Any]] = []
        for pattern, overrides in spec.routes.items():
            rwhere = f"{where}.routes[{pattern!r}]"
            if not isinstance(overrides, dict):
                raise GovernanceConfigError(f"{rwhere}: overrides must be a mapping")
            ov = dict(overrides)
            enabled = ov.pop("enabled", True)
            if not isinstance(enabled, bool):
                raise GovernanceConfigError(f"{rwhere}.enabled: must be true or false")
            if not enabled:
                variants.append((pattern, None))
            elif ov:
                variant = _check_plugin(_derive(base, factory, settings, ov, pattern, ctx, rwhere), rwhere)
                if variant is not base:
                    instances.append(variant)
                variants.append((pattern, variant))
            else:
                variants.append((pattern, base))
        table.append((base, variants))

    def resolve(transport: str, method: str, route: str) -> tuple[Any, ...]:
        qualified = f"{method} {route}"
        plan = []
        for base, variants in table:
            chosen = base
            for pattern, variant in variants:
                if fnmatchcase(route, pattern) or fnmatchcase(qualified, pattern):
                    chosen = variant
                    break
            if chosen is not None:
                plan.append(chosen)
        return tuple(plan)

    return Chain([base for base, _ in table], resolver=resolve, on_reject=on_reject), instances
