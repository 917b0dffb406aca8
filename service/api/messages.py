"""Validation messages in meterd's own voice: every body-field error says what the field must be,
bounds included, whichever check failed (no library wording, no raw regular expressions)."""

from __future__ import annotations

from typing import Any

from pydantic_core import ErrorDetails

# What each account field must be, as the README states it (bodies.AccountCreate/AccountPatch).
FIELD_RULES = {
    "name": "must be a string of 1 to 200 characters",
    "quota_bytes": "must be an integer from 0 to 4611686018427387904 (bytes a month), or null for unlimited",
    "status": "must be one of active, suspended",
    "billing_timezone": "must be an IANA time zone name such as Asia/Shanghai or UTC",
    "alert_thresholds": "must be a list of 1 to 10 fractions of quota_bytes, each above 0 and at most 10",
    "webhook_url": "must be an http:// or https:// URL without spaces, at most 2048 characters",
}
# For fields without a rule above: the check that failed, phrased the same way.
BY_TYPE = {
    "missing": "is required", "extra_forbidden": "unknown field",
    "int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "float_parsing": "must be a number", "bool_type": "must be true or false",
    "string_type": "must be a string", "list_type": "must be a list", "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
}
BOUNDS = {"greater_than": "must be above {gt}", "greater_than_equal": "must be at least {ge}",
          "less_than": "must be below {lt}", "less_than_equal": "must be at most {le}",
          "string_too_short": "must be at least {min_length} characters",
          "string_too_long": "must be at most {max_length} characters",
          "too_short": "must have at least {min_length} items", "too_long": "must have at most {max_length} items"}


def field_name(loc: tuple[Any, ...]) -> str:
    """('alert_thresholds', 0) -> 'alert_thresholds[0]', like the traffic body's records[0].bytes_in."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def phrase(error: ErrorDetails) -> dict[str, str]:
    kind, loc = error["type"], tuple(error["loc"])
    field = field_name(loc)
    if kind in ("missing", "extra_forbidden") or not loc:
        return {"field": field, "detail": BY_TYPE.get(kind, "must be a JSON object")}
    rule = FIELD_RULES.get(str(loc[0]))
    if rule is not None:
        return {"field": field, "detail": rule}
    if kind in BOUNDS:
        return {"field": field, "detail": BOUNDS[kind].format(**error.get("ctx", {}))}
    if kind == "value_error":
        return {"field": field, "detail": str(error.get("ctx", {}).get("error", "is not valid"))}
    return {"field": field, "detail": BY_TYPE.get(kind, "is not valid")}
