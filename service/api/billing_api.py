"""GET /v1/accounts/{id}/billing: the month's totals, today's p95/peak/daily-peak figures, and the
bill under the account's billing plan (or a mode asked for in the query, for comparison)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.api.context import ApiContext, json_response
from service.api.periods_api import frozen_bill, late_adjustments, period_routes
from service.api.problems import invalid
from service.api.regions_api import check_region, shown_region, stored_region
from service.api.timeparams import boundaries, format_local, month_bounds, parse_month, parse_zone
from service.billing import INTERVAL, bandwidth_bps
from service.billing_forecast import forecast
from service.billing_modes import Period, compute_bill
from service.billing_plan import OVERRIDES, BillingPlan, stored_plan
from service.storage import Repository
from service.storage.adjustments import FIELDS


def effective_plan(raw: str | None, params: Mapping[str, str]) -> BillingPlan:
    """The account's plan with the query's mode / direction / days put over it."""
    plan = stored_plan(raw)
    overrides = {k: params[k] for k in OVERRIDES if k in params}
    if not overrides:
        return plan
    try:
        return BillingPlan.model_validate({**plan.model_dump(mode="json"), **overrides})
    except ValidationError as exc:
        raise invalid([{"field": str(e["loc"][0]), "detail": e["msg"]} for e in exc.errors()]) from None


@dataclass(frozen=True)
class Month:
    """The billing month a request names, in the zone it is billed in."""
    zone: ZoneInfo
    year: int
    month: int
    end: int
    period: Period  # start, the cutoff (end or the last complete interval), local day bounds

    @property
    def complete(self) -> bool:
        return self.period.cutoff == self.end

    def header(self, account_id: str) -> dict[str, Any]:
        return {"account_id": account_id, "month": f"{self.year:04d}-{self.month:02d}", "timezone": self.zone.key,
                "period_start": format_local(self.period.start, self.zone),
                "period_end": format_local(self.end, self.zone)}


def billing_month(row: dict, params: Mapping[str, str], now: int) -> Month:
    zone = (parse_zone(params["tz"]) if "tz" in params
            else parse_zone(row["billing_timezone"], "billing_timezone"))
    year, month = parse_month(params.get("month"), datetime.fromtimestamp(now, zone).date())
    start, end = month_bounds(year, month, zone)
    if start % INTERVAL or end % INTERVAL:
        raise invalid([{"field": "tz", "detail": "the zone's offset is not a multiple of 5 minutes"}])
    if start > now:
        raise invalid([{"field": "month", "detail": "the month has not started"}])
    cutoff = min(end, now - now % INTERVAL)
    return Month(zone, year, month, end, Period(start, cutoff, boundaries(start, end, 86400, zone), zone))


async def billing_body(repo: Repository, row: dict, params: Mapping[str, str], now: int,
                       default_region: str = "default") -> dict[str, Any]:
    plan = effective_plan(row.get("billing_plan"), params)
    m = billing_month(row, params, now)
    period = m.period
    (b_in, b_out, reqs), stats, samples = await repo.billing_inputs(row["id"], period.start, period.cutoff, m.end,
                                                                    period.day_bounds)
    quota = row["quota_bytes"]
    body = {
        **m.header(row["id"]), "complete": m.complete, "intervals": (period.cutoff - period.start) // INTERVAL,
        "bytes_in": b_in, "bytes_out": b_out, "requests": reqs, "bandwidth_bps": bandwidth_bps(stats),
        "quota_bytes": quota, "over_quota": quota is not None and b_in + b_out > quota,
        "plan": plan.model_dump(mode="json"), "bill": compute_bill(samples, period, plan)}
    # The admin's adjustments inside the month (already in every figure): their provenance in short.
    adjusted = await repo.adjustments_in(row["id"], period.start, m.end)
    if adjusted:
        body["adjustments"] = {"count": len(adjusted), **{f: sum(a[f] for a in adjusted) for f in FIELDS}}
    return await add_region_bills(body, repo, row["id"], params, plan, period, default_region)


async def forecast_body(repo: Repository, row: dict, params: Mapping[str, str], now: int) -> dict[str, Any]:
    """GET .../billing/forecast: every mode projected to the month's end (service.billing_forecast)."""
    if "mode" in params:
        raise invalid([{"field": "mode", "detail": "the forecast covers every mode; leave mode out"}])
    plan = effective_plan(row.get("billing_plan"), params)
    m = billing_month(row, params, now)
    period = m.period
    *_, samples = await repo.billing_inputs(row["id"], period.start, period.cutoff, m.end, period.day_bounds)
    return {**m.header(row["id"]), "complete": m.complete, "as_of": format_local(period.cutoff, m.zone),
            "method": "weekly-repeat", "plan": plan.model_dump(mode="json"),
            **forecast(samples, period, m.end, plan)}


async def add_region_bills(body: dict[str, Any], repo: Repository, account_id: str, params: Mapping[str, str],
                           plan: BillingPlan, period: Period, default_region: str) -> dict[str, Any]:
    """``region=R``: the bill is R's alone. ``group_by=region`` or the plan's region_scope "each":
    ``regions`` lists one bill per region with usage in the period."""
    group_by = params.get("group_by")
    if group_by not in (None, "region"):
        raise invalid([{"field": "group_by", "detail": "must be region"}])
    name = params.get("region")
    each = group_by == "region" or plan.region_scope == "each"
    if name is None and not each:
        return body
    by_region = await repo.region_samples(account_id, period.start, period.cutoff)
    if name is not None:
        key = stored_region(check_region(name), default_region)
        body["region"] = shown_region(key, default_region)
        body["bill"] = compute_bill(by_region.get(key, {}), period, plan)
    if each:
        shown = sorted((shown_region(k, default_region), v) for k, v in by_region.items())
        body["regions"] = [{"region": r, "bill": compute_bill(v, period, plan)} for r, v in shown]
    return body


def billing_routes(ctx: ApiContext) -> list[BaseRoute]:
    repo, readable_account, default_region = ctx.repo, ctx.readable_account, ctx.default_region
    """GET .../billing and .../billing/forecast (admin, the account's key or its read-only token),
    and the admin's POST .../periods/{month}/close."""

    async def bill(row: dict, params: Mapping[str, str], now: int) -> dict[str, Any]:
        body = await billing_body(repo, row, params, now, default_region)
        if "tz" not in params:  # late records of the closed months just before this one
            late = await late_adjustments(repo, row["id"], body["month"])
            if late:
                body["late_adjustments"] = late
        return body

    async def billing(request: Request) -> Response:
        row = await readable_account(request)
        now = int(time.time())
        today = datetime.fromtimestamp(now, parse_zone(row["billing_timezone"], "billing_timezone")).date()
        frozen = await frozen_bill(repo, row, request.query_params, today)
        if frozen is not None:
            return Response(frozen, media_type="application/json")  # byte for byte as closed
        return json_response(await bill(row, request.query_params, now))

    async def billing_forecast(request: Request) -> Response:
        row = await readable_account(request)
        return json_response(await forecast_body(repo, row, request.query_params, int(time.time())))

    return [Route("/v1/accounts/{account_id}/billing", billing, methods=["GET"]),
            Route("/v1/accounts/{account_id}/billing/forecast", billing_forecast, methods=["GET"]),
            *period_routes(ctx, bill)]
