"""OpenAPI examples of the billing surface (plans, regions, forecast, adjustments, read-only tokens),
kept beside openapi_examples.py so each file stays readable; validated by the same test."""

from __future__ import annotations

from typing import Any

ACC = "acc_0h3k2m9x7q1w5e8r4t6y"
TS = "2026-12-01T08:00:00Z"
_BW = {"in": 1600, "out": 85333, "max": 85333}
_PLAN = {"mode": "month95", "direction": "max", "days": "valid", "region_scope": "all", "day_rank": 5,
         "night_window": "00:00-08:00", "unit_prices": {"month95": "12.50"}}
_BILL = {"mode": "month95", "direction": "max", "days": "valid", "bps": 85333, "billable_bps": 44043,
         "valid_days": 16, "days_in_period": 31, "proration": "0.51612903", "samples": 4608, "rank": 231,
         "days_counted": 16, "daily": None}

BILLING_EXAMPLES: dict[str, Any] = {
    "Billing": {"account_id": ACC, "month": "2026-11", "timezone": "UTC", "period_start": "2026-11-01T00:00:00Z",
                "period_end": "2026-12-01T00:00:00Z", "complete": True, "intervals": 8640, "bytes_in": 1200,
                "bytes_out": 64000, "requests": 3, "bandwidth_bps": {"p95": _BW, "peak": _BW, "daily_peak_avg": _BW},
                "quota_bytes": 10_000_000_000, "over_quota": False, "plan": _PLAN, "bill": _BILL},
    "Forecast": {"account_id": ACC, "month": "2026-12", "timezone": "UTC", "period_start": TS.replace("08", "00"),
                 "period_end": "2027-01-01T00:00:00Z", "complete": False, "as_of": "2026-12-07T23:55:00Z",
                 "method": "weekly-repeat", "plan": _PLAN, "forecasts": [
                     {"mode": "month95", "bps": 85333, "billable_bps": 85333, "valid_days": 31,
                      "proration": "1.00000000", "unit_price": "12.50", "cost": "1.07"}],
                 "cheapest": "month95"},
    "AdjustmentCreate": {"idempotency_key": "ticket-4711", "node_id": "edge-1", "interval": "2026-11-30T12:05:00Z",
                         "bytes_out": -1_000_000, "reason": "double-reported by a faulty edge agent (ticket 4711)"},
    "Adjustment": {"id": "adj_2k4m6p8r0t1v3x5z7b9d", "account_id": ACC, "idempotency_key": "ticket-4711",
                   "node_id": "edge-1", "interval": "2026-11-30T12:05:00Z", "bytes_in": 0, "bytes_out": -1_000_000,
                   "requests": 0, "reason": "double-reported by a faulty edge agent (ticket 4711)",
                   "source": "admin-adjustment", "created_at": TS},
    "ReadTokenCreate": {"ttl_seconds": 86_400},
    "ReadToken": {"id": "rt_9f8e7d6c5b4a3z2y1x0w", "prefix": "mr_Tq4Lx9", "account_id": ACC, "read_only": True,
                  "created_at": TS, "expires_at": "2026-12-02T08:00:00Z", "token": "mr_Tq4Lx9...shown-once"},
    "Regions": {"default_region": "default", "regions": [{"region": "cn-mainland", "nodes": ["edge-1", "edge-2"]},
                                                         {"region": "overseas", "nodes": ["edge-sg-1"]}],
                "unmapped_nodes": {"count": 1, "node_ids": ["edge-new-7"],
                                   "detail": "billed in the default region until mapped"}},
    "NodeRegion": {"node_id": "edge-1", "region": "cn-mainland"},
}
BILLING_EXAMPLES["Adjustments"] = {"account_id": ACC, "month": "2026-11",
                                   "adjustments": [BILLING_EXAMPLES["Adjustment"]]}
BILLING_EXAMPLES["ReadTokens"] = {"account_id": ACC, "tokens": [
    {k: v for k, v in BILLING_EXAMPLES["ReadToken"].items() if k != "token"}]}
