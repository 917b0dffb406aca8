"""A billing plan: which rule turns an account's 5-minute samples into a monthly bandwidth figure,
the way the clouds bill (see the README's billing section for each mode's rule)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MODES: tuple[Mode, ...] = ("month95", "day_peak", "month_avg_day_peak", "month_4th_day_peak", "month_avg_day95",
         "month_top5_day_peak", "night_half95")
DIRECTIONS = ("out", "in", "max", "avg")
DAY_RULES = ("all", "valid")
Mode = Literal["month95", "day_peak", "month_avg_day_peak", "month_4th_day_peak", "month_avg_day95",
               "month_top5_day_peak", "night_half95"]
Direction = Literal["out", "in", "max", "avg"]
Days = Literal["all", "valid"]
OVERRIDES = ("mode", "direction", "days")  # query parameters that override the stored plan


def window_minutes(value: str) -> tuple[int, int]:
    """'HH:MM-HH:MM' as (start, end) minutes of the local day; end 24:00 allowed, start != end."""
    m = re.fullmatch(r"([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})", value)
    if m is None:
        raise ValueError("must be HH:MM-HH:MM, e.g. 00:00-08:00")
    a, b = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
    if int(m[2]) >= 60 or int(m[4]) >= 60 or a >= 1440 or b > 1440:
        raise ValueError("times must be from 00:00 to 24:00")
    if a % 5 or b % 5:
        raise ValueError("times must be multiples of 5 minutes (whole billing intervals)")
    if a == b % 1440:
        raise ValueError("the window must not be empty or the whole day")
    return a, b


def _window(value: str) -> str:
    window_minutes(value)
    return value


NightWindow = Annotated[str, Field(max_length=11), AfterValidator(_window)]
UnitPrice = Annotated[Decimal, Field(ge=0, le=10**9, decimal_places=6, allow_inf_nan=False)]


class BillingPlan(BaseModel):
    """Stored per account as JSON; absent fields take these defaults (today's rule on max(in, out))."""
    model_config = ConfigDict(extra="forbid")
    mode: Mode = "month95"
    direction: Direction = "max"
    days: Days = "all"
    # all: one bill over every region; each: also one bill per billing region (the clouds' way).
    region_scope: Literal["all", "each"] = "all"
    day_rank: Annotated[int, Field(ge=1, le=300, strict=True)] = Field(
        5, description="month_top5_day_peak: a day's peak is its day_rank-th highest sample")
    night_window: NightWindow = Field("00:00-08:00", description="night_half95: local half-price window")
    unit_prices: dict[Mode, UnitPrice] = Field(
        default_factory=dict, description="per mode: price per Mbit/s for the month (day_peak: per Mbit/s-day); "
        "the forecast names the cheapest priced mode")


DEFAULT_PLAN = BillingPlan()


def stored_plan(raw: str | None) -> BillingPlan:
    """The plan kept in accounts.billing_plan (NULL: the default)."""
    return DEFAULT_PLAN if raw is None else BillingPlan.model_validate(orjson.loads(raw))


def plan_json(plan: BillingPlan | None) -> str | None:
    """The column value for a plan: every field spelled out, so later default changes never move it."""
    return None if plan is None else orjson.dumps(plan.model_dump(mode="json")).decode()
