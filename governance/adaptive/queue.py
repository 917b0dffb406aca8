"""Queue policy: how long a call waited in the event loop before the middleware saw it.

In one asyncio process a CPU-bound backlog queues *before* the middleware (ready queue, socket
buffers), so in-flight stays ~1 and a concurrency cap never sheds. The loop runs such a backlog in
batches: a marker callback queued behind each batch fires when the next one starts, so every call
gets a sojourn estimate (half the previous back-to-back batch, in which it arrived, plus its
position in the current one). This module only measures; the limit decides what the delay means.
"""

from __future__ import annotations

import math


class BatchQueue:
    def __init__(self, batch_gap: float) -> None:
        self.batch_gap = batch_gap
        self.in_batch = False
        self.need_mark = False  # the host must queue a marker behind the current batch
        self._batch_start = 0.0
        self._batch_carry = 0.0
        self._mark_t = -math.inf
        self._prev_batch = 0.0

    def on_mark(self, now: float) -> None:
        """The marker queued behind the current batch ran: that batch is over."""
        if self.in_batch:
            self._prev_batch = now - self._batch_start
            self.in_batch = False
        self._mark_t = now

    def sojourn(self, now: float) -> float:
        """Estimated queueing delay of the call being admitted now."""
        if not self.in_batch:
            self.in_batch = self.need_mark = True
            self._batch_start = now
            self._batch_carry = self._carry(now)
        return self._batch_carry + (now - self._batch_start)

    def _carry(self, now: float) -> float:
        """How long a call starting a batch now has already waited, between batches."""
        # The gap between two batches is the loop's I/O phase (reading sockets, accepting
        # connections) or idle time in poll. After a long batch the I/O phase is long too (it
        # reads everything that arrived meanwhile: 10-50 ms after 300-500 ms batches at a 5x
        # step), so a gap of up to a tenth of the previous batch still counts as back to back.
        back_to_back = now - self._mark_t <= max(self.batch_gap, 0.1 * self._prev_batch)
        return self._prev_batch / 2 if back_to_back else 0.0
