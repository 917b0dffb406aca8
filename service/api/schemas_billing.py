"""Response models of billing: the month's bill and figures, regions, the forecast (see schemas.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from service.api.schema_base import NonNegative, Strict
from service.billing_plan import BillingPlan, Days, Direction, Mode


class Bandwidth(Strict):
    in_: int = Field(alias="in", ge=0)
    out: int = NonNegative
    max: int = NonNegative


class BandwidthSet(Strict):
    p95: Bandwidth
    peak: Bandwidth
    daily_peak_avg: Bandwidth


class DailyFigure(Strict):
    date: str = Field(description="local day, YYYY-MM-DD")
    bps: int = Field(ge=0, description="the day's figure under the mode")
    rank: int = Field(ge=1, description="the day's sample rank taken (1 is the highest)")
    samples: int = NonNegative
    valid: bool = Field(description="the day had more than 0 bytes in the plan's direction")
    complete: bool
    counted: bool = Field(description="part of the monthly figure (complete, and valid under days=valid)")


class Bill(Strict):
    mode: Mode
    direction: Direction
    days: Days
    bps: int = Field(ge=0, description="the mode's figure in bits/s (day_peak: the sum of the counted days')")
    billable_bps: int = Field(ge=0, description="bps x proration, rounded once")
    valid_days: int = NonNegative
    days_in_period: int = NonNegative
    proration: str = Field(pattern=r"^[01]\.[0-9]{8}$", description="valid_days / days_in_period "
                           "under days=valid (8 decimals), else 1")
    samples: int = Field(ge=0, description="5-minute samples the figure is taken over")
    rank: int | None = Field(ge=0, description="the rank taken, 1 the highest: of the samples (month95, "
                             "night_half95; 0 with no samples), of each day's samples (day modes), 4 of the "
                             "daily peaks (month_4th_day_peak); null when it differs between days")
    days_counted: int | None = Field(ge=0, description="daily figures the monthly one is built from")
    daily: list[DailyFigure] | None = Field(description="day modes: every begun local day")


class AdjustmentSummary(Strict):
    count: int = Field(ge=1, description="GET .../adjustments?month= lists them")
    bytes_in: int
    bytes_out: int
    requests: int


class LateAdjustment(Strict):
    month: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}$", description="the closed month the records belong to")
    bytes_in: int
    bytes_out: int
    requests: int


class RegionBill(Strict):
    region: str
    bill: Bill


class Billing(Strict):
    account_id: str
    month: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}$")
    timezone: str
    period_start: datetime
    period_end: datetime
    complete: bool = Field(description="false while the month is still running")
    intervals: int = Field(ge=0, description="5-minute intervals counted so far")
    bytes_in: int = NonNegative
    bytes_out: int = NonNegative
    requests: int = NonNegative
    bandwidth_bps: BandwidthSet
    quota_bytes: int | None
    over_quota: bool
    plan: BillingPlan = Field(description="the account's plan, with the query's mode/direction/days over it")
    bill: Bill = Field(description="over all regions, or with region= that region's alone")
    region: str = Field(default=None, description="with region=: the region billed")  # type: ignore[assignment,arg-type]
    regions: list[RegionBill] = Field(default=None,  # type: ignore[assignment,arg-type]
                                      description="group_by=region or region_scope each: one bill per region")
    adjustments: AdjustmentSummary = Field(default=None, description="the admin's adjustments inside "  # type: ignore[assignment,arg-type]
                                           "the month, already in every figure (only when there are any)")
    late_adjustments: list[LateAdjustment] = Field(
        default=None, description="records counted after the closed months just before this one were "  # type: ignore[assignment,arg-type]
        "closed: live totals minus the frozen ones (only when there are any)")


class NodeRegion(Strict):
    node_id: str
    region: str


class RegionNodes(Strict):
    region: str
    nodes: list[str]


class UnmappedNodes(Strict):
    count: int = NonNegative
    node_ids: list[str] = Field(description="the first 100, by id")
    detail: str


class Regions(Strict):
    default_region: str
    regions: list[RegionNodes]
    unmapped_nodes: UnmappedNodes


class ModeForecast(Strict):
    mode: Mode
    bps: int = NonNegative
    billable_bps: int = NonNegative
    valid_days: int = NonNegative
    proration: str = Field(pattern=r"^[01]\.[0-9]{8}$")
    unit_price: str | None = Field(description="the plan's unit_prices entry for the mode")
    cost: str | None = Field(description="billable_bps / 10^6 x unit_price, to the cent (half up)")


class Forecast(Strict):
    account_id: str
    month: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}$")
    timezone: str
    period_start: datetime
    period_end: datetime
    complete: bool = Field(description="the month has ended: each forecast is the bill")
    as_of: datetime = Field(description="observed up to here; later intervals are projected")
    method: Literal["weekly-repeat"]
    plan: BillingPlan
    forecasts: list[ModeForecast]
    cheapest: Mode | None = Field(description="the priced mode with the lowest cost (null: no prices)")
