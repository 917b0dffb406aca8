"""Build a `Chain` from the typed governance settings (YAML/JSON-shaped).

    {"plugins": [
        {"type": "metrics"},
        {"type": "tracing"},
        {"type": "adaptive", "routes": {"/metrics": {"enabled": False}, "/healthz": {"enabled": False}}},
        {"type": "quota", "limit": "100/second;5000/minute",
         "routes": {"POST /v1/traffic": {"limit": "20/second"}}},
        {"type": "breaker"},
        {"type": "mypkg.plugins:AuditPlugin", "settings": {"level": 2}},
    ]}

Plugin settings go inline or under "settings". A built-in type is made by its module's
`create(settings, ctx, label)`; "pkg.module:Class" is called as `Class(**settings)`. `routes` maps a
glob, matched against the route ("/v1/accounts/{id}") and against "METHOD route"
("POST /v1/traffic"), to overrides; the first matching glob wins. `{"enabled": false}` removes the
plugin for those routes; other keys make a route variant: the factory called again with the merged
settings and the glob as its label. `overrides` ({type: settings}) merges into the chain's plugins
of that type (see apply_overrides), so a deployment can tune the default chain without restating it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from governance.core import AnyPlugin, Chain, RejectListener
from governance.outbound import OutboundSettings
from governance.plugins import PluginContext
from governance.tracing import TracingSettings

Factory = Callable[[dict[str, Any], PluginContext, str], AnyPlugin]
BUILTIN_TYPES = ("metrics", "tracing", "adaptive", "quota", "breaker")


class GovernanceConfigError(ValueError):
    """Invalid governance configuration; the message starts with the offending key."""


class PluginSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    enabled: bool = True
    settings: dict[str, Any] = Field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def merged_settings(self) -> dict[str, Any]:
        return {**self.settings, **(self.model_extra or {})}


DEFAULT_PLUGINS = [PluginSpec(type=t) for t in ("metrics", "tracing", "adaptive", "breaker")]


class GovernanceSettings(BaseModel):
    """The `governance:` section of a host's configuration."""

    model_config = ConfigDict(extra="forbid")
    plugins: list[PluginSpec] | None = Field(None, description="the chain; None: the host's default")
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="by plugin type: settings merged into that plugin of the chain")
    tracing: TracingSettings | None = Field(None, description="the process's tracer provider")
    outbound: dict[str, OutboundSettings] = Field(default_factory=dict, description="breakers by dependency")


def explain(prefix: str, exc: ValidationError) -> GovernanceConfigError:
    """One error style: `key.path: message` per problem."""
    parts = []
    for err in exc.errors():
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.get("loc", ()))
        parts.append(f"{prefix}{key if prefix else key.lstrip('.')}: {err.get('msg')}")
    return GovernanceConfigError("; ".join(parts))


def apply_overrides(plugins: list[PluginSpec] | list[dict[str, Any]],
                    overrides: dict[str, dict[str, Any]]) -> list[PluginSpec]:
    """The chain with `overrides` merged in: for each plugin type named, its settings over the spec's,
    its routes ahead of the spec's (the first matching glob wins), `enabled: false` drops the plugin.
    A production config can so tune the host's default chain without restating (and losing) it."""
    try:
        specs = [p if isinstance(p, PluginSpec) else PluginSpec.model_validate(p) for p in plugins]
    except ValidationError as exc:
        raise explain("plugins", exc) from exc
    for type_name, override in overrides.items():
        matching = [i for i, spec in enumerate(specs) if spec.type == type_name]
        if not matching:
            raise GovernanceConfigError(f"overrides.{type_name}: no plugin of type {type_name!r} in the chain "
                                        f"(types: {', '.join(s.type for s in specs)})")
        for i in matching:
            ov = dict(override)
            routes = dict(ov.pop("routes", None) or {})
            for glob, route_settings in specs[i].routes.items():
                routes.setdefault(glob, route_settings)
            enabled = ov.pop("enabled", specs[i].enabled)
            settings = {**specs[i].merged_settings(), **ov.pop("settings", {}), **ov}
            specs[i] = PluginSpec(type=type_name, enabled=enabled, settings=settings, routes=routes)
    return specs


def _builtin(type_name: str) -> Factory | None:
    if type_name not in BUILTIN_TYPES:
        return None
    # Imported lazily: a service that never enables tracing does not pay for importing the SDK.
    module = importlib.import_module(f"governance.plugins.{type_name}")
    factory: Factory = module.create
    return factory


def load_factory(path: str, where: str) -> Factory:
    """"pkg.mod:Class" -> a factory calling Class(**settings), with errors that name the config key."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise GovernanceConfigError(
            f"{where}: unknown plugin type {path!r}; use one of {', '.join(BUILTIN_TYPES)} or 'pkg.module:Class'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise GovernanceConfigError(f"{where}: cannot import module {module_name!r}: {exc}") from exc
    for name in attr.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            raise GovernanceConfigError(f"{where}: module {module_name!r} has no attribute {attr!r}")
    if not isinstance(obj, type):
        raise GovernanceConfigError(f"{where}: {path!r} is not a class")
    cls = obj
    return lambda settings, ctx, label: cls(**settings)


def _make(factory: Factory, settings: dict[str, Any], ctx: PluginContext, label: str, where: str) -> AnyPlugin:
    try:
        plugin = factory(settings, ctx, label)
    except ValidationError as exc:
        raise explain(where, exc) from exc
    except TypeError as exc:
        raise GovernanceConfigError(f"{where}: bad settings: {exc}") from exc
    except (ValueError, KeyError) as exc:
        raise GovernanceConfigError(f"{where}: {exc}") from exc
    if not callable(getattr(plugin, "admit", None)) or not isinstance(getattr(plugin, "name", None), str):
        raise GovernanceConfigError(f"{where}: {type(plugin).__name__} is not a plugin: it needs a `name` "
                                    "and `admit(call)` (see governance/README.md)")
    return plugin


Variants = list[tuple[str, AnyPlugin | None]]  # (glob, variant or None for "disabled")


def _variants(spec: PluginSpec, factory: Factory, base: AnyPlugin, ctx: PluginContext, where: str,
              instances: list[AnyPlugin]) -> Variants:
    variants: Variants = []
    for pattern, overrides in spec.routes.items():
        rwhere = f"{where}.routes[{pattern!r}]"
        ov = dict(overrides)
        enabled = ov.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise GovernanceConfigError(f"{rwhere}.enabled: must be true or false")
        if not enabled:
            variants.append((pattern, None))
        elif ov:
            variant = _make(factory, {**spec.merged_settings(), **ov}, ctx, pattern, rwhere)
            instances.append(variant)
            variants.append((pattern, variant))
        else:
            variants.append((pattern, base))
    return variants


def build_chain(plugins: list[PluginSpec] | list[dict[str, Any]] | None, ctx: PluginContext,
                on_reject: RejectListener | None = None) -> tuple[Chain, list[AnyPlugin]]:
    """The chain and every distinct plugin instance."""
    try:
        specs = [p if isinstance(p, PluginSpec) else PluginSpec.model_validate(p)
                 for p in (DEFAULT_PLUGINS if plugins is None else plugins)]
    except ValidationError as exc:
        raise explain("plugins", exc) from exc
    table: list[tuple[AnyPlugin, Variants]] = []
    instances: list[AnyPlugin] = []
    for idx, spec in enumerate(specs):
        where = f"plugins[{idx}]"
        if not spec.enabled:
            continue
        factory = _builtin(spec.type) or load_factory(spec.type, f"{where}.type")
        base = _make(factory, spec.merged_settings(), ctx, "default", where)
        instances.append(base)
        table.append((base, _variants(spec, factory, base, ctx, where, instances)))

    def resolve(transport: str, method: str, route: str) -> list[AnyPlugin]:
        qualified = f"{method} {route}"
        plan = []
        for base, variants in table:
            chosen: AnyPlugin | None = base
            for pattern, variant in variants:
                if fnmatchcase(route, pattern) or fnmatchcase(qualified, pattern):
                    chosen = variant
                    break
            if chosen is not None:
                plan.append(chosen)
        return plan

    return Chain([base for base, _ in table], resolver=resolve, on_reject=on_reject), instances
