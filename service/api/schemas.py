"""Pydantic models of the JSON the API answers. /openapi.json is generated from them (and from the
request models in bodies.py); the API tests validate real responses against them, so the document
cannot drift from what is served."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from service.api.schema_base import NonNegative, Strict
from service.api.schemas_billing import Billing, Forecast, NodeRegion, Regions
from service.billing_plan import BillingPlan


class Account(Strict):
    id: str
    name: str
    status: Literal["active", "suspended", "deleted"]
    quota_bytes: int | None = Field(ge=0, description="monthly quota; null is unlimited")
    billing_timezone: str = Field(description="IANA zone of the balance and billing months")
    alert_thresholds: list[float] = Field(description="fractions of quota_bytes that raise an event")
    webhook_url: str | None
    billing_plan: BillingPlan = Field(default=None, description="only when set; absent: "  # type: ignore[assignment,arg-type]
                                      "the default plan (month95, max, all days)")
    webhook_secret: str = Field(default=None, description="only in the response that sets a new "  # type: ignore[assignment,arg-type]
                                "webhook_url: shown once")
    created_at: datetime
    updated_at: datetime


class ApiKey(Strict):
    id: str
    prefix: str
    key: str = Field(description="shown once; stored hashed")
    account_id: str
    created_at: datetime


class AccountPage(Strict):
    accounts: list[Account]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


class KeyInfo(Strict):
    id: str
    prefix: str = Field(description="the key's first characters; the secret itself is never shown again")
    created_at: datetime
    last_used_at: datetime | None = Field(description="last authentication, to the minute")
    revoked_at: datetime | None


class KeyList(Strict):
    account_id: str
    keys: list[KeyInfo]


class ReadToken(Strict):
    id: str
    prefix: str
    account_id: str
    read_only: Literal[True]
    created_at: datetime
    expires_at: datetime
    token: str = Field(default=None, description="only when created: shown once, stored hashed")  # type: ignore[assignment,arg-type]


class ReadTokens(Strict):
    account_id: str
    tokens: list[ReadToken] = Field(description="live tokens (unexpired, unrevoked), oldest first, no secrets")


class Counts(Strict):
    bytes_in: int = NonNegative
    bytes_out: int = NonNegative
    requests: int = NonNegative


class UsagePoint(Counts):
    ts: datetime = Field(description="bucket start, with the zone's offset at that instant")


class NodeSeries(Strict):
    node_id: str
    points: list[UsagePoint]
    totals: Counts


class RegionSeries(Strict):
    region: str
    points: list[UsagePoint]
    totals: Counts


class Usage(Strict):
    account_id: str
    step: Literal["1m", "1h", "1d"]
    timezone: str
    start: datetime
    end: datetime
    node_id: list[str] = Field(default=None, description="the node_id filters, when given")  # type: ignore[assignment,arg-type]
    points: list[UsagePoint] = Field(default=None,  # type: ignore[assignment,arg-type]
                                     description="buckets with traffic only, oldest first (without group_by)")
    series: list[NodeSeries] = Field(default=None,  # type: ignore[assignment,arg-type]
                                     description="one per node, by node id (with group_by=node_id)")
    region: list[str] = Field(default=None, description="the region filters, when given")  # type: ignore[assignment,arg-type]
    regions: list[RegionSeries] = Field(default=None,  # type: ignore[assignment,arg-type]
                                        description="one per billing region (with group_by=region)")
    totals: Counts


class Balance(Strict):
    account_id: str
    timezone: str
    period_start: datetime
    period_end: datetime
    quota_bytes: int | None
    used_bytes: int = NonNegative
    remaining_bytes: int | None
    over_quota: bool


class Adjustment(Strict):
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


class Adjustments(Strict):
    account_id: str
    month: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}$")
    adjustments: list[Adjustment] = Field(description="the month's adjustments, newest first (at most 1,000)")


class Delivery(Strict):
    status: Literal["pending", "retrying", "delivered", "given_up"]
    attempts: int = NonNegative
    http_status: int | None = Field(description="the receiver's status at the last attempt; null if none came")
    delivered_at: datetime | None
    next_attempt_at: datetime | None = Field(description="pending or retrying: when it is due (or its "
                                                         "attempt's lease ends)")
    given_up_at: datetime | None


class QuotaEvent(Strict):
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


class Events(Strict):
    account_id: str
    events: list[QuotaEvent]


class WebhookSecret(Strict):
    webhook_secret: str


class WriteResult(Strict):
    batch_id: str
    accepted: int = NonNegative
    duplicate: bool


class BatchStatus(Strict):
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
