"""Query parameters of the usage endpoint: RFC 3339 start/end and a 1m/1h/1d step."""

from __future__ import annotations

from datetime import UTC, datetime

from service.api.problems import invalid

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


def usage_window(params: dict[str, str], now_s: int) -> tuple[int, int, str, int]:
    step_name = params.get("step", "1m")
    step = STEPS.get(step_name)
    if step is None:
        raise invalid([{"field": "step", "detail": "must be one of 1m, 1h, 1d"}])
    end = parse_rfc3339(params["end"], "end") if "end" in params else now_s
    start = parse_rfc3339(params["start"], "start") if "start" in params else end - 3600
    if start >= end:  # checked before rounding too: both may round into the same step
        raise invalid([{"field": "start", "detail": "must be before end"}])
    # Align to the step so buckets are whole minutes/hours/days (UTC).
    start -= start % step
    if end % step:
        end += step - end % step
    if start >= end:
        raise invalid([{"field": "start", "detail": "must be before end"}])
    if (end - start) // step > MAX_POINTS:
        detail = f"the window holds more than {MAX_POINTS} steps; use a larger step"
        raise invalid([{"field": "step", "detail": detail}])
    return start, end, step_name, step
