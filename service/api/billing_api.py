"""GET /v1/accounts/{id}/billing: the month's totals, today's p95/peak/daily-peak figures, and the
bill under the account's billing plan (or a mode asked for in the query, for comparison)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from service.api.problems import invalid
from service.api.regions_api import check_region, shown_region, stored_region
from service.api.timeparams import boundaries, format_local, month_bounds, parse_month, parse_zone
from service.billing import INTERVAL, bandwidth_bps
from service.billing_modes import Period, compute_bill
from service.billing_plan import OVERRIDES, BillingPlan, stored_plan
from service.storage import Repository


def effective_plan(raw: str | None, params: Mapping[str, str]) -> BillingPlan:
    """The account's plan with the query's mode / direction / days put over it."""
    plan = stored_plan(raw)
    overrides = {k: params[k] for k in OVERRIDES if k in params}
    if not overrides:
        return plan
    try:
        return BillingPlan.model_validate({**plan.model_dump(), **overrides})
    except ValidationError as exc:
        raise invalid([{"field": str(e["loc"][0]), "detail": e["msg"]} for e in exc.errors()]) from None


async def billing_body(repo: Repository, row: dict, params: Mapping[str, str], now: int,
                       default_region: str = "default") -> dict[str, Any]:
    zone = (parse_zone(params["tz"]) if "tz" in params
            else parse_zone(row["billing_timezone"], "billing_timezone"))
    plan = effective_plan(row.get("billing_plan"), params)
    year, month = parse_month(params.get("month"), datetime.fromtimestamp(now, zone).date())
    start, end = month_bounds(year, month, zone)
    if start % INTERVAL or end % INTERVAL:
        raise invalid([{"field": "tz", "detail": "the zone's offset is not a multiple of 5 minutes"}])
    if start > now:
        raise invalid([{"field": "month", "detail": "the month has not started"}])
    last_complete = now - now % INTERVAL
    cutoff = min(end, last_complete)
    day_bounds = boundaries(start, end, 86400, zone)
    (b_in, b_out, reqs), stats, samples = await repo.billing_inputs(row["id"], start, cutoff, end, day_bounds)
    quota = row["quota_bytes"]
    period = Period(start, cutoff, day_bounds, zone)
    body = {
        "account_id": row["id"], "month": f"{year:04d}-{month:02d}", "timezone": zone.key,
        "period_start": format_local(start, zone), "period_end": format_local(end, zone),
        "complete": end <= last_complete, "intervals": max(0, (cutoff - start) // INTERVAL),
        "bytes_in": b_in, "bytes_out": b_out, "requests": reqs, "bandwidth_bps": bandwidth_bps(stats),
        "quota_bytes": quota, "over_quota": quota is not None and b_in + b_out > quota,
        "plan": plan.model_dump(), "bill": compute_bill(samples, period, plan)}
    return await add_region_bills(body, repo, row["id"], params, plan, period, default_region)


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
