"""Get-or-create Prometheus collectors per registry.

Several `Governance` objects (one per role in an all-in-one process, or per test) may share one
registry; registering the same name twice raises in prometheus-client, so collectors are memoised
per registry and reused.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

C = TypeVar("C")

_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Any]] = weakref.WeakKeyDictionary()


def metric(registry: CollectorRegistry, cls: type[C], name: str, doc: str, labels: tuple[str, ...] = (),
           **kwargs: Any) -> C:
    """The collector called `name` in `registry`, created on first use with these arguments."""
    with _lock:
        known = _by_registry.setdefault(registry, {})
        existing = known.get(name)
        if existing is None:
            existing = cls(name, doc, labelnames=labels, registry=registry, **kwargs)  # type: ignore[call-arg]
            known[name] = existing
        return existing
