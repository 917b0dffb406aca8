"""Starting a SERVER span so that an unsampled call costs what a decision costs.

The SDK's `Tracer.start_span` asks the sampler and, for a dropped span, builds a `NonRecordingSpan`
anyway; at a 10 % ratio that is nine calls in ten. `SpanStarter` asks the provider's sampler first
(the same `should_sample` the SDK calls, with the same parent and trace id) and for a DROP builds the
`NonRecordingSpan` itself: same trace id (the parent's, or a fresh random one), a new span id,
sampled=0, the sampler's trace state. Put in the context, it propagates `traceparent` with
sampled=0 exactly as the SDK's would, and ParentBased children of it stay unsampled. Only a call
the sampler records gets an SDK span, built by the SDK's own `start_span`.

A recorded root must keep the trace id it was judged by: the SDK draws its own, so the provider's id
generator must be a `PresetIdGenerator` (what `setup_tracing` installs), which hands the SDK that id.
For any other provider the plugin leaves every span to the SDK. The sampler is asked twice for a
recorded root, so it must decide by trace id and parent alone (the SDK's built-ins do).
"""

from __future__ import annotations

import threading
from random import getrandbits
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags


class PresetIdGenerator(RandomIdGenerator):
    """Random ids, except that the thread starting a span may preset the next trace id."""

    def __init__(self) -> None:
        super().__init__()
        self.presets = threading.local()

    def fresh_trace_id(self) -> int:
        return super().generate_trace_id()

    def generate_trace_id(self) -> int:
        preset: int | None = getattr(self.presets, "trace_id", None)
        if preset is None:
            return super().generate_trace_id()
        self.presets.trace_id = None
        return preset

    def preset(self, trace_id: int | None) -> None:
        self.presets.trace_id = trace_id


_RANDOM = TraceFlags(TraceFlags.RANDOM_TRACE_ID)
_DEFAULT = TraceFlags(TraceFlags.DEFAULT)


class SpanStarter:
    """`start(name, context, attributes)`: the SDK's span when the sampler records, else a
    NonRecordingSpan built here. Made by `for_provider`, which returns None for providers it can't serve."""

    __slots__ = ("tracer", "sampler", "ids")

    def __init__(self, tracer: trace.Tracer, sampler: Any, ids: PresetIdGenerator) -> None:
        self.tracer, self.sampler, self.ids = tracer, sampler, ids

    @classmethod
    def for_provider(cls, provider: Any, tracer: trace.Tracer) -> SpanStarter | None:
        ids, sampler = getattr(provider, "id_generator", None), getattr(provider, "sampler", None)
        if not isinstance(ids, PresetIdGenerator) or sampler is None:
            return None
        return cls(tracer, sampler, ids)

    def start(self, name: str, context: Context, attributes: dict[str, Any]) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        ids = self.ids
        root = not parent.is_valid
        if root:  # random ids as RandomIdGenerator draws them (0 is the invalid id)
            trace_id, random_id = getrandbits(128) or ids.fresh_trace_id(), True
        else:
            trace_id, random_id = parent.trace_id, parent.trace_flags.random_trace_id
        result = self.sampler.should_sample(context, trace_id, name, SpanKind.SERVER, attributes)
        if result.decision.is_recording():
            if not root:
                return self.tracer.start_span(name, context, SpanKind.SERVER, attributes)
            ids.preset(trace_id)
            try:
                return self.tracer.start_span(name, context, SpanKind.SERVER, attributes)
            finally:
                ids.preset(None)
        return NonRecordingSpan(SpanContext(trace_id, getrandbits(64) or ids.generate_span_id(), False,
                                            _RANDOM if random_id else _DEFAULT, result.trace_state))
