"""Built-in plugins. Each module has one plugin and a `create(settings, ctx, label)` factory;
`governance.config` maps type names to those factories."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What a built-in plugin may need from its host besides its own settings."""

    registry: CollectorRegistry
    service_name: str
    tracer_provider: Any = None  # opentelemetry TracerProvider; None means the global one
    # State route variants of one plugin share (e.g. the adaptive limiters' sampler), by key.
    shared: dict[str, Any] = field(default_factory=dict)
    # Coroutines to await when the Governance is closed (a plugin registers its own).
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
