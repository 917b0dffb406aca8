"""Query parameters of the usage and billing endpoints: RFC 3339 start/end, a 1m/1h/1d step, an
IANA time zone, and the local bucket boundaries they define."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

from service.api.problems import invalid
from service.timezones import boundaries, format_local_at, month_bounds

__all__ = ["boundaries", "month_bounds"]  # re-exported: the API modules import time helpers from here

STEPS = {"1m": 60, "1h": 3600, "1d": 86400}
MAX_POINTS = 10_000


def parse_rfc3339(value: str, field: str) -> int:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise invalid([{"field": field, "detail": "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"}]) from None
    if dt.tzinfo is None:
        raise invalid([{"field": field, "detail": "must carry a UTC offset (e.g. 'Z')"}])
    return int(dt.timestamp())


def format_rfc3339(epoch_s: int | float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


@cache
def _zone_names() -> frozenset[str]:
    # The system database also lists files that are not zone names ("localtime", "posixrules",
    # posix/ and right/ copies): a zone must not depend on how the host is set up.
    skip = {"localtime", "posixrules", "Factory"}
    return frozenset(n for n in available_timezones()
                     if n not in skip and not n.startswith(("posix/", "right/")))


def is_zone(value: str) -> bool:
    return value == "UTC" or value in _zone_names()


def parse_zone(value: str | None, field: str = "tz") -> ZoneInfo:
    """An IANA zone from the system database; anything else (paths, "localtime", typos) is a 400."""
    if value is None or value == "UTC":
        return ZoneInfo("UTC")
    if not is_zone(value):
        raise invalid([{"field": field, "detail": f"unknown time zone {value[:64]!r}; use an IANA name "
                                                  "such as Asia/Shanghai or UTC"}])
    return ZoneInfo(value)


def format_local(epoch_s: int, zone: ZoneInfo) -> str:
    """RFC 3339 with the zone's offset at that instant ('Z' for UTC itself)."""
    return format_local_at(epoch_s, zone.key)


def parse_month(value: str | None, today: date) -> tuple[int, int]:
    """YYYY-MM (default: the month holding ``today``)."""
    if value is None:
        return today.year, today.month
    m = re.fullmatch(r"([0-9]{4})-([0-9]{2})", value)
    if m is None or not 1 <= int(m[2]) <= 12 or not 1970 <= int(m[1]) <= 9998:
        raise invalid([{"field": "month", "detail": "must be YYYY-MM, e.g. 2026-11"}])
    return int(m[1]), int(m[2])


def usage_window(params: dict[str, str], now_s: int, zone: ZoneInfo) -> tuple[list[int], str, int]:
    """The local bucket boundaries of [start, end) at the step (see ``boundaries``)."""
    step_name = params.get("step", "1m")
    step = STEPS.get(step_name)
    if step is None:
        raise invalid([{"field": "step", "detail": "must be one of 1m, 1h, 1d"}])
    end = parse_rfc3339(params["end"], "end") if "end" in params else now_s
    start = parse_rfc3339(params["start"], "start") if "start" in params else end - 3600
    if start >= end:
        raise invalid([{"field": "start", "detail": "must be before end"}])
    # Checked on the nominal step first so a huge window never builds a huge list; a DST day's
    # extra hour can add a few points, which the limit's "about" absorbs.
    steps = (end - start) // step
    if steps > MAX_POINTS:
        detail = f"the window holds {steps} {step_name} steps, more than {MAX_POINTS} steps; use a larger step"
        raise invalid([{"field": "step", "detail": detail}])
    try:
        bounds = boundaries(start, end, step, zone)
        # At step=1m no datetime is built above; the local offsets are needed for the body.
        format_local_at(bounds[0], zone.key), format_local_at(bounds[-1], zone.key)
        return bounds, step_name, step
    except (OverflowError, ValueError):  # beyond what datetime can represent (years 1..9999)
        raise invalid([{"field": "start", "detail": "out of range"}]) from None
