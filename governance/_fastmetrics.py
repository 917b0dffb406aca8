"""Lock-free request metrics rendered by a custom collector at scrape time.

prometheus-client's metric objects take a mutex per update and do label checks on every observe;
with three updates per request that was ~3 us of the chain's budget. These families keep plain
Python numbers per label set and build the standard families only when scraped. Updates must come
from one thread (the event loop's) — true for ASGI servers and grpc.aio; scrapes may come from any
thread (reads are of ints/floats, and a torn read is at worst off by one in-flight update).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString


class _Family(Collector):
    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> Any:  # the child type depends on the family
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._new_child()
        return child

    def _new_child(self) -> Any:
        raise NotImplementedError

    def describe(self) -> list[Any]:
        return [self._family()]

    def _family(self) -> Any:
        raise NotImplementedError


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class _ValueFamily(_Family):
    """A counter or gauge: one number per label set."""

    family_type: type[CounterMetricFamily] | type[GaugeMetricFamily] = GaugeMetricFamily

    def _new_child(self) -> _Value:
        return _Value()

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        return self.family_type(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        fam = self._family()
        for values, child in list(self._children.items()):
            fam.add_metric(values, child.value)
        yield fam


class FastCounter(_ValueFamily):
    family_type = CounterMetricFamily


class FastGauge(_ValueFamily):
    family_type = GaugeMetricFamily


class _HistChild:
    __slots__ = ("bounds", "counts", "sum", "exemplars")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.exemplars: dict[int, Exemplar] | None = None  # bucket index -> latest exemplar

    def observe(self, amount: float, trace_id: str | None = None) -> None:
        # bounds ends with +Inf, so the index always exists; `le` semantics via bisect_left.
        i = bisect_left(self.bounds, amount)
        self.counts[i] += 1
        self.sum += amount
        if trace_id is not None:  # OpenMetrics keeps one exemplar per bucket: the latest wins
            if self.exemplars is None:
                self.exemplars = {}
            self.exemplars[i] = Exemplar({"trace_id": trace_id}, amount, time.time())


class FastHistogram(_Family):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None, buckets: Sequence[float] = ()) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.bounds = bounds
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> _HistChild:
        return _HistChild(self.bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        fam = self._family()
        les = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        for values, child in list(self._children.items()):
            total, cumulative = 0, []
            exemplars = dict(child.exemplars or {})
            for i, (le, n) in enumerate(zip(les, list(child.counts), strict=True)):
                total += n
                ex = exemplars.get(i)
                cumulative.append((le, total) if ex is None else (le, total, ex))
            fam.add_metric(values, cumulative, child.sum)
        yield fam
