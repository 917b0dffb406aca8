"""Is the partition still the log whose offsets the database stores?

An offset alone cannot tell: after a broker or topic reset, a new log that has grown past the old
stored offset looks valid, and seeking to it would skip the new log's first messages in silence.
So each stored offset keeps a fingerprint of the message just before it (the last one counted);
on (re)assignment the consumer starts one message early and compares. A different message, or a
gap where it should be, means the log was reset under the stored offsets.
"""

from __future__ import annotations

import hashlib
import logging

from aiokafka.structs import ConsumerRecord

log = logging.getLogger("meterd.consumer")


def message_mark(msg: ConsumerRecord) -> str:
    """Key and producer timestamp: a batch's dedupe key, and when that copy of it was produced."""
    h = hashlib.blake2b(digest_size=16)
    h.update(msg.key or b"")
    h.update(b"|%d" % (msg.timestamp or 0))
    return h.hexdigest()


class LogIdentity:
    """The check pending per partition: (stored next offset, fingerprint of the message before it)."""

    def __init__(self) -> None:
        self._pending: dict[int, tuple[int, str]] = {}

    def start_at(self, partition: int, offset: int, mark: str | None) -> int:
        """Where to seek: one message early when the stored offset's predecessor can be checked."""
        if offset > 0 and mark:
            self._pending[partition] = (offset, mark)
            return offset - 1
        self._pending.pop(partition, None)
        return offset

    def pending(self, partition: int) -> bool:
        return partition in self._pending

    def forget(self, partition: int) -> None:
        self._pending.pop(partition, None)

    def check(self, partition: int, messages: list[ConsumerRecord]) -> tuple[list[ConsumerRecord], str | None]:
        """(the messages to count, None), or ([], why) when the partition is not the log counted."""
        pending = self._pending.pop(partition, None)
        if pending is None or not messages:
            return messages, None
        offset, mark = pending
        first = messages[0]
        if first.offset == offset - 1:
            if message_mark(first) == mark:
                return messages[1:], None
            return [], f"offset {offset - 1} holds another message than the one last counted"
        if first.offset == offset:
            # The message before it is gone (retention) but nothing after it was skipped.
            log.warning("could not check the partition's last counted message (deleted by retention?)",
                        extra={"partition": partition, "offset": offset})
            return messages, None
        return [], f"the log jumps from offset {offset - 1} to {first.offset}"
