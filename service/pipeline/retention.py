"""What both consumers forget on schedule: batch ids past the dedupe retention, minute rows past
the minute retention (the rollups keep their sums), and claims never counted, quota events and
dead letters past theirs."""

from __future__ import annotations

import logging
import time

from service.config import ConsumerSettings
from service.storage.ledger import Ledger

log = logging.getLogger("meterd.consumer")
PURGE_EVERY_S = 600


async def purge_expired(ledger: Ledger, cfg: ConsumerSettings) -> None:
    now = int(time.time())
    removed = await ledger.purge(now - cfg.dedupe_retention_seconds)
    if removed:
        log.info("purged expired batch ids", extra={"removed": removed})
    minutes = await ledger.purge_minutes(now - cfg.minute_retention_seconds)
    if minutes:
        log.info("purged per-minute usage past retention", extra={"removed": minutes})
    removed_rows = await ledger.purge_records(
        claims_before_s=now - cfg.unapplied_claim_retention_seconds,
        events_before_ms=(now - cfg.quota_event_retention_seconds) * 1000,
        dead_before_ms=(now - cfg.dead_letter_retention_seconds) * 1000)
    if any(removed_rows.values()):
        log.info("purged rows past retention", extra=removed_rows)
