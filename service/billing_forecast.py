"""Bill prediction: every mode projected to the month's end from the month so far, and the
cheapest mode at the plan's unit prices.

The method (README, "Bill forecast"): each 5-minute interval not yet observed repeats the
interval one week earlier, or, when that is before the month's start, the latest earlier day at
the same time that was observed; with nothing observed it is 0. The projected month is then billed
like a complete one, so once the month has ended the forecast is the bill itself."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from service.billing import INTERVAL
from service.billing_modes import Period, compute_bill
from service.billing_plan import MODES, BillingPlan

DAY = 86400
WEEK = 7 * DAY
CENT = Decimal("0.01")


def projected_samples(samples: Mapping[int, tuple[int, int]], start: int, cutoff: int,
                      end: int) -> dict[int, tuple[int, int]]:
    """The observed samples of [start, cutoff) plus a projected one for every interval of [cutoff, end)."""
    out = {t: v for t, v in samples.items() if start <= t < cutoff}
    if cutoff <= start:
        return out
    for t in range(cutoff, end, INTERVAL):
        source = _source(t, start, cutoff)
        if source is not None and source in out:
            out[t] = out[source]
    return out


def _source(t: int, start: int, cutoff: int) -> int | None:
    """The observed interval ``t`` repeats: a whole number of weeks back, else of days back."""
    for step in (WEEK, DAY):
        back = -(-(t - cutoff + 1) // step) * step  # the fewest steps that land before cutoff
        if t - back >= start:
            return t - back
    return None


def cost(billable_bps: int, price: Decimal | None) -> str | None:
    """Price per Mbit/s (10^6 bit/s; per Mbit/s-day for day_peak) times the figure, to the cent."""
    if price is None:
        return None
    return str((Decimal(billable_bps) / Decimal(10**6) * price).quantize(CENT, rounding=ROUND_HALF_UP))


def forecast(samples: Mapping[int, tuple[int, int]], period: Period, end: int, plan: BillingPlan) -> dict[str, Any]:
    """{"forecasts": [one per mode], "cheapest": the priced mode with the lowest cost, or None}."""
    projected = projected_samples(samples, period.start, period.cutoff, end)
    full = Period(period.start, end, period.day_bounds, period.zone)
    rows = []
    for mode in MODES:
        bill = compute_bill(projected, full, plan.model_copy(update={"mode": mode}))
        price = plan.unit_prices.get(mode)
        rows.append({"mode": mode, "bps": bill["bps"], "billable_bps": bill["billable_bps"],
                     "valid_days": bill["valid_days"], "proration": bill["proration"],
                     "unit_price": None if price is None else str(price), "cost": cost(bill["billable_bps"], price)})
    priced = [r for r in rows if r["cost"] is not None]
    cheapest = min(priced, key=lambda r: Decimal(r["cost"]))["mode"] if priced else None  # first on ties
    return {"forecasts": rows, "cheapest": cheapest}
