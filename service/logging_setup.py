"""Structured logging: structlog rendering for stdlib loggers, with the current trace id."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def _trace_ids(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    try:
        from opentelemetry import trace
    except ImportError:  # tracing is optional
        return event
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event["trace_id"] = format(ctx.trace_id, "032x")
        event["span_id"] = format(ctx.span_id, "016x")
    return event


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _trace_ids,
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter (aiokafka reconnect loops, uvicorn per-request lines) stays at WARNING.
    # aiosqlite logs every statement with its parameters at DEBUG: key hashes must not reach logs.
    for noisy in ("aiokafka", "kafka", "uvicorn.access", "uvicorn.error", "sqlalchemy.engine", "aiosqlite",
                  "asyncpg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
