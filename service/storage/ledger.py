"""The pipeline's bookkeeping: batch claims, the database log, and the one flush transaction.

Both logs (Kafka and the database table) end in `Ledger.apply`: usage sums, the batch ids they
count and the log position move together or not at all. Every check that decides "counted once"
is made again inside that transaction, so two consumers can never both count a batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from service.storage import purges, schema
from service.storage.db import Database
from service.storage.ledger_types import (
    AlreadyApplied,
    BatchState,
    Claim,
    ClaimResult,
    DeadLetter,
    Flush,
    LogRow,
    LogRowsTaken,
    OffsetConflict,
)
from service.storage.quota_alerts import Crossing, record_crossings
from service.storage.usage_write import add_usage

__all__ = ["AlreadyApplied", "BatchState", "Claim", "ClaimResult", "DeadLetter", "Flush", "Ledger", "LogRow",
           "LogRowsTaken", "OffsetConflict", "now_ms"]

_CHUNK = 1000  # rows per multi-row statement: far below both databases' parameter limits


def now_ms() -> int:
    return int(time.time() * 1000)


class Ledger:
    def __init__(self, db: Database, *, future_s: int = 300) -> None:
        self.db = db
        # ingest.max_future_seconds: how far ahead of its claim a record may be stamped, and the
        # clock difference between writer and consumer hosts the dedupe retention allows for.
        self.future_s = future_s
        self._insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert
        # Told about the quota threshold crossings each committed flush recorded (metrics), and
        # about stored sums it stopped at the overflow ceiling.
        self.on_crossings: Callable[[list[Crossing]], None] | None = None
        self.on_saturated: Callable[[int], None] | None = None

    # -- writer side --------------------------------------------------------------------------
    async def claim(self, claims: Sequence[Claim], *, append_to_log: bool) -> list[ClaimResult]:
        """Claims each batch id for its digest in one transaction (group commit); with
        ``append_to_log`` the newly claimed batches are appended to the database log in the same
        transaction, so an acknowledged batch is on disk before the writer answers."""
        b = schema.batches
        now_s = int(time.time())
        unique: dict[str, Claim] = {}
        for c in claims:
            unique.setdefault(c.key, c)
        async with self.db.engine.begin() as conn:
            won: set[str] = set()
            rows = [{"dedupe_key": c.key, "digest": c.digest, "records": c.records, "claimed_at": now_s,
                     "applied_at_ms": None, "latest_record_s": c.latest_record_s} for c in unique.values()]
            for chunk in _chunks(rows):
                stmt = self._insert(b).values(chunk).on_conflict_do_nothing(index_elements=["dedupe_key"])
                won.update(r[0] for r in await conn.execute(stmt.returning(b.c.dedupe_key)))
            earlier = await _states(conn, [k for k in unique if k not in won])
            if append_to_log:
                fresh = [unique[k] for k in unique if k in won]
                log_rows = [{"dedupe_key": c.key, "records": c.records, "payload": c.payload,
                             "traceparent": c.traceparent, "appended_at_ms": now_ms()} for c in fresh]
                for chunk in _chunks(log_rows):
                    await conn.execute(schema.ingest_log.insert(), chunk)
        results = []
        for c in claims:
            if c.key in won and unique[c.key] is c:
                results.append(ClaimResult(new=True, conflict=False, applied=False))
                continue
            state = earlier.get(c.key)
            if state is None:  # the same key twice in one group: the second is a duplicate of the first
                same = unique[c.key].digest == c.digest
                results.append(ClaimResult(new=False, conflict=not same, applied=False))
            else:
                results.append(ClaimResult(new=False, conflict=state.digest != c.digest,
                                           applied=state.applied_at_ms is not None))
        return results

    async def batch_states(self, keys: Iterable[str]) -> dict[str, BatchState]:
        async with self.db.engine.connect() as conn:
            return await _states(conn, list(keys))

    async def log_backlog(self) -> tuple[int, int, int | None]:
        """(rows, records, oldest appended_at_ms) waiting in the database log."""
        log = schema.ingest_log
        q = select(func.count(), func.coalesce(func.sum(log.c.records), 0), func.min(log.c.appended_at_ms))
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(q)).one()
        return int(row[0]), int(row[1]), (int(row[2]) if row[2] is not None else None)

    # -- consumer side ------------------------------------------------------------------------
    async def read_log(self, after_seq: int, limit: int, *, max_records: int | None = None,
                       max_bytes: int | None = None) -> list[LogRow]:
        """The oldest rows after ``after_seq``: at most ``limit`` rows, ``max_records`` records and
        ``max_bytes`` payload bytes, but always the first row (it must be counted some time)."""
        log = schema.ingest_log
        sizes = (select(log.c.seq, log.c.records, func.length(log.c.payload))
                 .where(log.c.seq > after_seq).order_by(log.c.seq).limit(limit))
        async with self.db.engine.connect() as conn:
            chosen: list[int] = []
            records = size = 0
            for seq, n, nbytes in await conn.execute(sizes):
                records, size = records + int(n), size + int(nbytes or 0)
                if chosen and ((max_records is not None and records > max_records)
                               or (max_bytes is not None and size > max_bytes)):
                    break
                chosen.append(int(seq))
            if not chosen:
                return []
            q = (select(log.c.seq, log.c.dedupe_key, log.c.payload, log.c.traceparent, log.c.appended_at_ms)
                 .where(log.c.seq.in_(chosen)).order_by(log.c.seq))
            return [LogRow(int(r[0]), r[1], bytes(r[2]), r[3], int(r[4])) for r in await conn.execute(q)]

    async def load_offsets(self, group_id: str, topic: str) -> dict[int, int]:
        return {p: offset for p, (offset, _) in (await self.load_positions(group_id, topic)).items()}

    async def load_positions(self, group_id: str, topic: str) -> dict[int, tuple[int, str | None]]:
        """partition -> (next offset, fingerprint of the message before it, when known)."""
        o = schema.consumer_offsets
        async with self.db.engine.connect() as conn:
            res = await conn.execute(select(o.c.partition, o.c.next_offset, o.c.last_mark)
                                     .where(and_(o.c.group_id == group_id, o.c.topic == topic)))
            return {int(r[0]): (int(r[1]), r[2]) for r in res}

    async def apply(self, flush: Flush, *, group_id: str = "", topic: str = "") -> None:
        """The one flush transaction. Raises (and writes nothing) when this consumer no longer owns
        what it is about to count: OffsetConflict, LogRowsTaken or AlreadyApplied. Quota
        threshold crossings the usage causes are recorded in the same transaction."""
        crossings: list[Crossing] = []
        saturated = 0
        async with self.db.engine.begin() as conn:
            if flush.offsets:
                await self._cas_offsets(conn, group_id, topic, flush.offsets, flush.marks)
            if flush.log_seqs:
                await _take_log_rows(conn, flush.log_seqs)
            if flush.dead:
                await conn.execute(schema.dead_letters.insert(), [
                    {"dedupe_key": d.key, "payload": d.payload, "reason": d.reason[:1000], "at_ms": now_ms()}
                    for d in flush.dead])
            if flush.applied:
                await self._mark_applied(conn, flush.applied)
            if flush.usage:
                saturated = await add_usage(conn, self._insert, flush.usage)
                crossings = await record_crossings(conn, self._insert, flush.usage)
        if crossings and self.on_crossings is not None:
            self.on_crossings(crossings)  # after commit: counts only crossings that were stored
        if saturated and self.on_saturated is not None:
            self.on_saturated(saturated)

    async def _cas_offsets(self, conn: AsyncConnection, group_id: str, topic: str,
                           offsets: dict[int, tuple[int | None, int]], marks: dict[int, str]) -> None:
        o = schema.consumer_offsets
        lost: set[int] = set()
        for partition, (expected, new) in sorted(offsets.items()):
            mark = marks.get(partition)
            if expected is None:
                stmt = self._insert(o).values(group_id=group_id, topic=topic, partition=partition,
                                              next_offset=new, last_mark=mark).on_conflict_do_nothing()
                res = await conn.execute(stmt)
            else:
                res = await conn.execute(
                    update(o).where(and_(o.c.group_id == group_id, o.c.topic == topic,
                                         o.c.partition == partition, o.c.next_offset == expected))
                    .values(next_offset=new, last_mark=mark))
            if res.rowcount != 1:
                lost.add(partition)
        if lost:
            raise OffsetConflict(topic, lost)

    async def reset_offsets(self, group_id: str, topic: str, partitions: dict[int, int]) -> None:
        """Stores new positions for partitions whose stored offset no longer fits their log."""
        o = schema.consumer_offsets
        async with self.db.engine.begin() as conn:
            for partition, offset in partitions.items():
                stmt = self._insert(o).values(group_id=group_id, topic=topic, partition=partition,
                                              next_offset=offset, last_mark=None)
                await conn.execute(stmt.on_conflict_do_update(index_elements=["group_id", "topic", "partition"],
                                                              set_={"next_offset": offset, "last_mark": None}))

    async def _mark_applied(self, conn: AsyncConnection, applied: dict[str, tuple[bytes, int]]) -> None:
        # Inserts the ids of batches no writer claimed (older writers, tests producing directly),
        # marks claimed ones; an id counted already or claimed for other records is not returned.
        b = schema.batches
        now_s, at = int(time.time()), now_ms()
        rows = [{"dedupe_key": k, "digest": d, "records": n, "claimed_at": now_s, "applied_at_ms": at,
                 "latest_record_s": None} for k, (d, n) in sorted(applied.items())]
        marked: set[str] = set()
        for chunk in _chunks(rows):
            stmt = self._insert(b).values(chunk)
            stmt = stmt.on_conflict_do_update(
                index_elements=["dedupe_key"], set_={"applied_at_ms": stmt.excluded.applied_at_ms},
                where=and_(b.c.applied_at_ms.is_(None), b.c.digest == stmt.excluded.digest))
            marked.update(r[0] for r in await conn.execute(stmt.returning(b.c.dedupe_key)))
        missing = set(applied) - marked
        if missing:
            raise AlreadyApplied(missing)

    async def purge_minutes(self, before_s: int) -> int:
        async with self.db.engine.begin() as conn:
            return await purges.minute_rows(conn, before_s)

    async def purge(self, before_s: int) -> int:
        """Forgets counted batch ids no retry can reach any more (see purges.counted_batch_ids)."""
        async with self.db.engine.begin() as conn:
            return await purges.counted_batch_ids(conn, before_s, self.future_s)

    async def purge_records(self, *, claims_before_s: int, events_before_ms: int,
                            dead_before_ms: int) -> dict[str, int]:
        """Claims never counted, quota events and dead letters past their retention."""
        async with self.db.engine.begin() as conn:
            return {"claims": await purges.unapplied_claims(conn, claims_before_s),
                    "quota_events": await purges.quota_events(conn, events_before_ms),
                    "dead_letters": await purges.dead_letters(conn, dead_before_ms)}


async def _states(conn: AsyncConnection, keys: list[str]) -> dict[str, BatchState]:
    b = schema.batches
    out: dict[str, BatchState] = {}
    for chunk in _chunks(keys):
        res = await conn.execute(select(b.c.dedupe_key, b.c.digest, b.c.records, b.c.claimed_at, b.c.applied_at_ms)
                                 .where(b.c.dedupe_key.in_(chunk)))
        for r in res:
            out[r[0]] = BatchState(bytes(r[1]), int(r[2]), int(r[3]), None if r[4] is None else int(r[4]))
    return out


async def _take_log_rows(conn: AsyncConnection, seqs: list[int]) -> None:
    log = schema.ingest_log
    taken = 0
    for chunk in _chunks(seqs):
        res = await conn.execute(log.delete().where(log.c.seq.in_(chunk)))
        taken += res.rowcount or 0
    if taken != len(seqs):  # rows already gone: another consumer counted them
        raise LogRowsTaken(f"{len(seqs) - taken} of {len(seqs)} log rows were taken by another consumer")


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]
