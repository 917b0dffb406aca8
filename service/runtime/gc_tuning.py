"""Garbage-collector settings for a serving process.

Every request allocates a few dozen short-lived containers (coroutines, dicts, spans); with CPython's
default threshold (700) a busy loop runs a young collection every few requests, each one promotes
whatever the ~64 in-flight requests hold at that moment, and the promoted objects trigger full
collections that walk the whole heap (all imported modules included: ~40 ms each here). Two changes,
applied once the process has finished starting:

- `gc.freeze()` moves everything allocated during start-up (modules, classes, config) into the
  permanent generation, so full collections no longer walk it;
- a young-generation threshold of 10,000 lets in-flight objects die by reference counting before a
  collection would promote them.

Reference cycles are still collected; memory is bounded by the same generational scheme. Measured
on the governance middleware benchmark (benchmarks/middleware.py, arm "governance-10%, default GC"
vs "governance-10%"): see benchmarks/results/governance-middleware.md.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def tune_gc_for_serving(young_threshold: int = YOUNG_THRESHOLD) -> None:
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)
