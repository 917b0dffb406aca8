"""What the next message to a robot carries: the queued notifications (Entry), their importance,
and the choice of the most important ones that fit one message whole (dispatcher.py sends it)."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from service.relay.payload import WebhookMessage, severity_rank
from service.relay.render import RenderedMessage, Renderer
from service.relay.settings import MentionSettings

# Bounds the rendering work per message; more would never fit 20,000 bytes anyway.
MAX_NOTIFICATIONS_PER_MESSAGE = 400


class Outcome(enum.Enum):
    DELIVERED = "delivered"  # sent; HTTP 200
    QUEUED = "queued"  # the relay owns it now; HTTP 202
    RETRY = "retry"  # DingTalk asked for a retry; HTTP 503 so Alertmanager retries
    REJECTED = "rejected"  # DingTalk refused for good; HTTP 424, no retry
    OVERLOADED = "overloaded"  # queue full; HTTP 503
    DROPPED = "dropped"  # relay-owned and given up (never returned to a request)


@dataclass(eq=False)
class Entry:
    message: WebhookMessage
    received: float
    future: asyncio.Future[tuple[Outcome, str]]
    owned: bool = False  # the request already answered 202; the relay must deliver it
    row_id: int | None = None  # its row in the store while owned


@dataclass
class Pending:
    pending: list[Entry] = field(default_factory=list)
    retry_at: float = 0.0
    backoff: float = 0.0


def _importance(entry: Entry) -> tuple[int, int]:
    """Firing before resolved-only, then by the most severe firing alert (sorted() keeps arrival order)."""
    firing = [severity_rank(a.severity) for a in entry.message.alerts if a.status == "firing"]
    return (0, min(firing)) if firing else (1, 0)


def take_batch(pending: list[Entry], renderer: Renderer,
               mentions: MentionSettings) -> tuple[list[Entry], list[Entry], RenderedMessage]:
    """The most important notifications that fit one message whole, the ones left waiting, the message.

    Only a single notification too large on its own gets truncated, so a storm is spread over
    as many messages as the budget allows instead of being cut.
    """
    order = sorted(pending, key=_importance)[:MAX_NOTIFICATIONS_PER_MESSAGE]

    def render(k: int) -> RenderedMessage:
        return renderer.render([e.message for e in order[:k]], mentions)

    best_k, best = 1, render(1)
    lo, hi = 2, len(order)
    while lo <= hi:  # largest k whose message needs no truncation
        mid = (lo + hi) // 2
        candidate = render(mid)
        if candidate.truncated:
            hi = mid - 1
        else:
            best_k, best, lo = mid, candidate, mid + 1
    batch = order[:best_k]
    chosen = {id(e) for e in batch}
    return batch, [e for e in pending if id(e) not in chosen], best
