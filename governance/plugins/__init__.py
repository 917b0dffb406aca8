"""Built-in plugins. Each module has one plugin; `governance.config` maps type names to them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What a built-in plugin may need from its host besides its own settings."""

    registry: CollectorRegistry
    service_name: str
    tracer_provider: Any = None  # opentelemetry TracerProvider; None means the global one
