"""Sampled root server spans recorded in plain fields and handed to the SDK's processors at end().

Why this exists: the SDK's `Span` costs ~20 us to start and end on this project's bench machine
(four locks, bounded containers built up front, sampler and processor plumbing), while the
`ReadableSpan` the processors finally receive costs ~4 us to build. Between start and end nothing
but the code holding the span sees it, provided every span processor ignores `on_start`, which is
true of the SDK's own `BatchSpanProcessor` and `SimpleSpanProcessor`. So for exactly that setup a
root span can keep its fields in plain Python objects and become the same `ReadableSpan` at end():
attribute cleaning and the span limits are applied by the SDK's own `BoundedAttributes` and
`BoundedList`, once. No library offers this, hence the hand-written class.

`LightRecorder.for_tracer` returns None for anything else (a non-SDK tracer, a concurrent multi
processor, an unknown private layout), and `usable()` re-checks the processors whenever the provider
gets a new one; callers then fall back to the SDK's span.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from time import time_ns
from types import MappingProxyType
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SynchronousMultiSpanProcessor
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, SpanContext, SpanKind
from opentelemetry.trace.status import Status, StatusCode

log = logging.getLogger(__name__)

# Processors known to do nothing in on_start/_on_ending (checked by exact type: a subclass may not).
_ON_END_ONLY = (BatchSpanProcessor, SimpleSpanProcessor)
_UNSET = Status(StatusCode.UNSET)


class LightRecorder:
    """What a light span needs from the tracer, read once; `usable()` is the per-span gate."""

    __slots__ = ("tracer", "multi", "resource", "scope", "limits", "metrics", "_is_enabled", "_procs", "_ok")

    def __init__(self, tracer: SdkTracer, multi: SynchronousMultiSpanProcessor, limits: SpanLimits) -> None:
        self.tracer, self.multi, self.limits = tracer, multi, limits
        self.resource = tracer.resource
        self.scope = tracer._instrumentation_scope  # noqa: SLF001 - read once, checked in for_tracer
        self.metrics = getattr(tracer, "_tracer_metrics", None)  # the SDK's own span counters, if any
        self._is_enabled = getattr(tracer, "_is_enabled", None)  # reads the tracer's live config
        self._procs: Any = None
        self._ok = False

    @classmethod
    def for_tracer(cls, tracer: Any) -> LightRecorder | None:
        multi = getattr(tracer, "span_processor", None)
        limits = getattr(tracer, "_span_limits", None)
        if not (isinstance(tracer, SdkTracer) and type(multi) is SynchronousMultiSpanProcessor
                and isinstance(limits, SpanLimits) and hasattr(tracer, "_instrumentation_scope")
                and isinstance(getattr(multi, "_span_processors", None), tuple)):
            return None
        return cls(tracer, multi, limits)

    def usable(self) -> bool:
        procs = self.multi._span_processors  # noqa: SLF001 - a tuple, replaced when one is added
        if procs is not self._procs:
            self._procs = procs
            self._ok = all(type(p) in _ON_END_ONLY for p in procs)
        return self._ok and (self._is_enabled is None or self._is_enabled())

    def start(self, name: str, context: SpanContext, attributes: Mapping[str, Any],
              kind: SpanKind = SpanKind.SERVER) -> LightSpan:
        done = self.metrics.start_span(None, Decision.RECORD_AND_SAMPLE) if self.metrics is not None else None
        return LightSpan(self, name, context, attributes, kind, done)


class LightSpan(trace_api.Span):
    """A recording root span with the SDK span's observable behaviour (see the module docstring)."""

    def __init__(self, recorder: LightRecorder, name: str, context: SpanContext, attributes: Mapping[str, Any],
                 kind: SpanKind, record_end_metrics: Any) -> None:
        self._rec, self._name, self._context, self._kind = recorder, name, context, kind
        self._attrs: dict[str, Any] = dict(attributes)
        # True while every attribute is one the SDK would store unchanged, so end() can hand the
        # dict over as is instead of re-cleaning it through BoundedAttributes (~1 us per attribute).
        max_len, plain = recorder.limits.max_span_attribute_length, True
        for k, v in attributes.items():
            if not _is_plain(k, v, max_len):
                plain = False
                break
        self._plain = plain
        self._events: list[Event] | None = None
        self._links: list[Link] | None = None
        self._status = _UNSET
        self._end_metrics = record_end_metrics
        self._start_time = time_ns()
        self._end_time: int | None = None

    # -- what instrumented code reads -------------------------------------------------------------
    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> SpanKind:
        return self._kind

    @property
    def attributes(self) -> Mapping[str, Any]:
        return MappingProxyType(self._attrs)

    @property
    def status(self) -> Status:
        return self._status

    @property
    def start_time(self) -> int:
        return self._start_time

    @property
    def end_time(self) -> int | None:
        return self._end_time

    # -- what instrumented code writes ------------------------------------------------------------
    def _ended(self, what: str) -> bool:
        if self._end_time is None:
            return False
        log.warning("Tried calling %s on an ended span.", what)
        return True

    def set_attribute(self, key: str, value: Any) -> None:
        if self._ended("set_attribute"):
            return
        attrs = self._attrs
        attrs.pop(key, None)  # a rewritten key counts as newest, as in BoundedAttributes
        attrs[key] = value
        if self._plain and not _is_plain(key, value, self._rec.limits.max_span_attribute_length):
            self._plain = False

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def _frozen(self, max_count: int | None, attributes: Mapping[str, Any] | None) -> BoundedAttributes:
        """An event's or link's attributes, cleaned and frozen at once as the SDK does."""
        return BoundedAttributes(max_count, attributes, max_value_len=self._rec.limits.max_attribute_length,
                                 immutable=True)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None,
                  timestamp: int | None = None) -> None:
        if self._ended("add_event"):
            return
        event = Event(name, self._frozen(self._rec.limits.max_event_attributes, attributes), timestamp)
        if self._events is None:
            self._events = []
        self._events.append(event)

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        if self._ended("add_link") or not (context and (context.is_valid or attributes or context.trace_state)):
            return
        link = Link(context, self._frozen(self._rec.limits.max_link_attributes, attributes))
        if self._links is None:
            self._links = []
        self._links.append(link)

    def update_name(self, name: str) -> None:
        if not self._ended("update_name"):
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._ended("set_status") or self._status.status_code is StatusCode.OK:
            return  # OK is final, as in the SDK
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(self, exception: BaseException, attributes: Mapping[str, Any] | None = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        module, qualname = type(exception).__module__, type(exception).__qualname__
        fields: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            fields.update(attributes)
        self.add_event("exception", fields, timestamp)

    def __exit__(self, exc_type: Any, exc_val: BaseException | None, exc_tb: Any) -> None:
        if exc_val is not None and self.is_recording():  # the SDK span's defaults
            self.record_exception(exc_val, escaped=True)
            self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        super().__exit__(exc_type, exc_val, exc_tb)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            log.warning("Calling end() on an ended span.")
            return
        self._end_time = end = end_time if end_time is not None else time_ns()
        rec = self._rec
        limits = rec.limits
        attrs: Any = self._attrs
        max_attrs = limits.max_span_attributes
        if not self._plain or (max_attrs is not None and len(attrs) > max_attrs):
            attrs = BoundedAttributes(max_attrs, attrs, immutable=True, max_value_len=limits.max_span_attribute_length)
        else:
            attrs = MappingProxyType(attrs)  # read-only from here on, like the SDK's ended span
        readable = ReadableSpan(
            name=self._name, context=self._context, parent=None, resource=rec.resource, attributes=attrs,
            events=_bounded(limits.max_events, self._events), links=_bounded(limits.max_links, self._links),
            kind=self._kind, status=self._status, start_time=self._start_time, end_time=end,
            instrumentation_scope=rec.scope)
        if self._end_metrics is not None:
            self._end_metrics()
        rec.multi.on_end(readable)


def _bounded(maxlen: int | None, items: Sequence[Any] | None) -> Sequence[Any]:
    # ReadableSpan takes any sequence; only a non-empty one needs the SDK's limit (and drop count).
    return BoundedList.from_seq(maxlen, items) if items else ()


def _is_plain(key: Any, value: Any, max_len: int | None) -> bool:
    """Would BoundedAttributes store this pair unchanged? (Scalars only; anything else is cleaned.)"""
    kind = type(value)
    return type(key) is str and key != "" and (
        kind is bool or kind is int or kind is float or (kind is str and max_len is None))
