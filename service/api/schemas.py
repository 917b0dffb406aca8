"""Pydantic models of the JSON the API answers. /openapi.json is generated from them (and from the
request models in bodies.py); the API tests validate real responses against them, so the document
cannot drift from what is served."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.billing_plan import BillingPlan, Days, Direction, Mode

NonNegative = Field(ge=0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Account(_Strict):
    id: str
    name: str
    status: Literal["active", "suspended", "deleted"]
    quota_bytes: int | None = Field(ge=0, description="monthly quota; null is unlimited")
    billing_timezone: str = Field(description="IANA zone of the balance and billing months")
    alert_thresholds: list[float] = Field(description="fractions of quota_bytes that raise an event")
    webhook_url: str | None
    billing_plan: BillingPlan = Field(default=None, description="only when set; absent: "  # type: ignore[assignment]
                                      "the default plan (month95, max, all days)")
    webhook_secret: str = Field(default=None, description="only in the response that sets a new "  # type: ignore[assignment]
                                "webhook_url: shown once")
    created_at: datetime
    updated_at: datetime


class ApiKey(_Strict):
    id: str
    prefix: str
    key: str = Field(description="shown once; stored hashed")
    account_id: str
    created_at: datetime


class AccountPage(_Strict):
    accounts: list[Account]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


class KeyInfo(_Strict):
    id: str
    prefix: str = Field(description="the key's first characters; the secret itself is never shown again")
    created_at: datetime
    last_used_at: datetime | None = Field(description="last authentication, to the minute")
    revoked_at: datetime | None


class KeyList(_Strict):
    account_id: str
    keys: list[KeyInfo]


class ReadToken(_Strict):
    id: str
    prefix: str
    account_id: str
    read_only: Literal[True]
    created_at: datetime
    expires_at: datetime
    token: str = Field(default=None, description="only when created: shown once, stored hashed")  # type: ignore[assignment]


class ReadTokens(_Strict):
    account_id: str
    tokens: list[ReadToken] = Field(description="live tokens (unexpired, unrevoked), oldest first, no secrets")


class Counts(_Strict):
    bytes_in: int = NonNegative
    bytes_out: int = NonNegative
    requests: int = NonNegative


class UsagePoint(Counts):
    ts: datetime = Field(description="bucket start, with the zone's offset at that instant")


class NodeSeries(_Strict):
    node_id: str
    points: list[UsagePoint]
    totals: Counts


class RegionSeries(_Strict):
    region: str
    points: list[UsagePoint]
    totals: Counts


class Usage(_Strict):
    account_id: str
    step: Literal["1m", "1h", "1d"]
    timezone: str
    start: datetime
    end: datetime
    node_id: list[str] = Field(default=None, description="the node_id filters, when given")  # type: ignore[assignment]
    points: list[UsagePoint] = Field(default=None,  # type: ignore[assignment]
                                     description="buckets with traffic only, oldest first (without group_by)")
    series: list[NodeSeries] = Field(default=None,  # type: ignore[assignment]
                                     description="one per node, by node id (with group_by=node_id)")
    region: list[str] = Field(default=None, description="the region filters, when given")  # type: ignore[assignment]
    regions: list[RegionSeries] = Field(default=None,  # type: ignore[assignment]
                                        description="one per billing region (with group_by=region)")
    totals: Counts


class Balance(_Strict):
    account_id: str
    timezone: str
    period_start: datetime
    period_end: datetime
    quota_bytes: int | None
    used_bytes: int = NonNegative
    remaining_bytes: int | None
    over_quota: bool


class Bandwidth(_Strict):
    in_: int = Field(alias="in", ge=0)
    out: int = NonNegative
    max: int = NonNegative


class BandwidthSet(_Strict):
    p95: Bandwidth
    peak: Bandwidth
    daily_peak_avg: Bandwidth


class DailyFigure(_Strict):
    date: str = Field(description="local day, YYYY-MM-DD")
    bps: int = Field(ge=0, description="the day's figure under the mode")
    rank: int = Field(ge=1, description="the day's sample rank taken (1 is the highest)")
    samples: int = NonNegative
    valid: bool = Field(description="the day had more than 0 bytes in the plan's direction")
    complete: bool
    counted: bool = Field(description="part of the monthly figure (complete, and valid under days=valid)")


class Bill(_Strict):
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


class AdjustmentSummary(_Strict):
    count: int = Field(ge=1, description="GET .../adjustments?month= lists them")
    bytes_in: int
    bytes_out: int
    requests: int


class LateAdjustment(_Strict):
    month: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}$", description="the closed month the records belong to")
    bytes_in: int
    bytes_out: int
    requests: int


class RegionBill(_Strict):
    region: str
    bill: Bill


class Billing(_Strict):
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
    region: str = Field(default=None, description="with region=: the region billed")  # type: ignore[assignment]
    regions: list[RegionBill] = Field(default=None,  # type: ignore[assignment]
                                      description="group_by=region or region_scope each: one bill per region")
    adjustments: AdjustmentSummary = Field(default=None, description="the admin's adjustments inside "  # type: ignore[assignment]
                                           "the month, already in every figure (only when there are any)")
    late_adjustments: list[LateAdjustment] = Field(
        default=None, description="records counted after the closed months just before this one were "  # type: ignore[assignment]
        "closed: live totals minus the frozen ones (only when there are any)")


class NodeRegion(_Strict):
    node_id: str
    region: str


class RegionNodes(_Strict):
    region: str
    nodes: list[str]


class UnmappedNodes(_Strict):
    count: int = NonNegative
    node_ids: list[str] = Field(description="the first 100, by id")
    detail: str


class Regions(_Strict):
    default_region: str
    regions: list[RegionNodes]
    unmapped_nodes: UnmappedNodes


class ModeForecast(_Strict):
    mode: Mode
    bps: int = NonNegative
    billable_bps: int = NonNegative
    valid_days: int = NonNegative
    proration: str = Field(pattern=r"^[01]\.[0-9]{8}$")
    unit_price: str | None = Field(description="the plan's unit_prices entry for the mode")
    cost: str | None = Field(description="billable_bps / 10^6 x unit_price, to the cent (half up)")


class Forecast(_Strict):
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


class Adjustment(_Strict):
    id: str
    account_id: str
    idempotency_key: str
    node_id: str
    interval: datetime = Field(description="start of the 5-minute interval adjusted")
    bytes_in: int
    bytes_out: int
    requests: int
    reason: str
    source: Literal["admin-adjustment"]
    created_at: datetime


class Adjustments(_Strict):
    account_id: str
    month: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}$")
    adjustments: list[Adjustment] = Field(description="the month's adjustments, newest first (at most 1,000)")


class Delivery(_Strict):
    status: Literal["pending", "retrying", "delivered", "given_up"]
    attempts: int = NonNegative
    http_status: int | None = Field(description="the receiver's status at the last attempt; null if none came")
    delivered_at: datetime | None
    next_attempt_at: datetime | None = Field(description="pending or retrying: when it is due (or its "
                                                         "attempt's lease ends)")
    given_up_at: datetime | None


class QuotaEvent(_Strict):
    id: str
    type: Literal["quota.threshold_crossed"]
    account_id: str
    threshold: float
    quota_bytes: int = NonNegative
    used_bytes: int = NonNegative
    timezone: str
    period_start: datetime
    period_end: datetime
    created_at: datetime
    delivery: Delivery | None = Field(default=None, description="in the events list and the redeliver "
                                      "answer, never in the webhook; null: no webhook URL when the event was "
                                      "recorded, or the delivery is older than webhooks.retention_seconds")


class Events(_Strict):
    account_id: str
    events: list[QuotaEvent]


class WebhookSecret(_Strict):
    webhook_secret: str


class WriteResult(_Strict):
    batch_id: str
    accepted: int = NonNegative
    duplicate: bool


class BatchStatus(_Strict):
    batch_id: str
    # pending: acknowledged and durable in the log, not counted yet (Kafka mode: or claimed by a
    # write whose produce failed and whose client is expected to retry)
    status: Literal["applied", "pending"]
    records: int = NonNegative
    accepted_at: datetime
    applied_at: datetime | None


class FieldError(BaseModel):
    field: str
    detail: str


class ProblemDetails(BaseModel):
    type: str
    title: str
    status: int
    detail: str = None  # type: ignore[assignment]
    instance: str = None  # type: ignore[assignment]
    errors: list[FieldError] = None  # type: ignore[assignment]


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    Account, AccountPage, ApiKey, KeyList, Usage, Balance, Billing, Events, QuotaEvent, WebhookSecret, WriteResult,
    BatchStatus, ProblemDetails, Regions, NodeRegion, ReadToken, ReadTokens, Forecast, Adjustment, Adjustments)
