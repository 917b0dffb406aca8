"""Local calendar arithmetic on Unix seconds: bucket and month boundaries in an IANA zone."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo


class BoundaryError(RuntimeError):
    """A local boundary did not advance as a calendar must: a bug, failed fast instead of a hang."""


def local_floor(epoch_s: int, step: int, zone: ZoneInfo) -> int:
    """Start of the local minute, hour or day (step 60/3600/86400) holding the instant."""
    if step == 60:
        return epoch_s - epoch_s % 60
    dt = datetime.fromtimestamp(epoch_s, zone)
    if step == 3600:
        return int(dt.replace(minute=0, second=0, microsecond=0).timestamp())
    return local_midnight(dt.date(), zone)


def local_midnight(day: date, zone: ZoneInfo) -> int:
    # A midnight skipped by a DST jump maps to the jump's instant (fold=0 uses the earlier offset).
    return int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp())


def next_boundary(b: int, step: int, zone: ZoneInfo) -> int:
    if step == 60:
        return b + 60
    if step == 3600:
        n = local_floor(b + 3600, 3600, zone)
        return n if n > b else b + 3600
    return local_midnight(datetime.fromtimestamp(b, zone).date() + timedelta(days=1), zone)


def boundaries(start: int, end: int, step: int, zone: ZoneInfo) -> list[int]:
    """Bucket starts from the local boundary at or before ``start`` up to the first at or after
    ``end`` (the last element closes the last bucket). Local days are 23 or 25 hours on DST days."""
    b = local_floor(start, step, zone)
    out = [b]
    # No local bucket is shorter than half its step (DST shifts are at most an hour, 30 min at
    # Lord Howe), so more iterations than this mean the zone arithmetic is wrong.
    limit = (end - b) // (step // 2) + 2
    while b < end:
        nxt = next_boundary(b, step, zone)
        if nxt <= b or len(out) > limit:
            raise BoundaryError(f"local {step}-s boundaries in {zone.key} stopped advancing at {b}")
        b = nxt
        out.append(b)
    return out


def month_bounds(year: int, month: int, zone: ZoneInfo) -> tuple[int, int]:
    nxt = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return local_midnight(date(year, month, 1), zone), local_midnight(nxt, zone)


def format_local_at(epoch_s: int, zone_name: str) -> str:
    """RFC 3339 with the zone's offset at that instant ('Z' for UTC itself)."""
    if zone_name == "UTC":
        return datetime.fromtimestamp(epoch_s, ZoneInfo("UTC")).isoformat().replace("+00:00", "Z")
    return datetime.fromtimestamp(epoch_s, ZoneInfo(zone_name)).isoformat()
