"""Examples for /openapi.json: one per request body and response, by schema name, and the tag of
each area. tests/service/test_openapi_examples.py validates every example against its model."""

from __future__ import annotations

from typing import Any

from governance.problem import TYPE_BASE
from service.api.openapi_billing_examples import BILLING_EXAMPLES

ACC = "acc_0h3k2m9x7q1w5e8r4t6y"
TS = "2026-12-01T08:00:00Z"
_ACCOUNT = {"id": ACC, "name": "acme", "status": "active", "quota_bytes": 10_000_000_000,
            "billing_timezone": "UTC", "alert_thresholds": [0.8, 1.0], "webhook_url": None,
            "created_at": TS, "updated_at": TS}
_COUNTS = {"bytes_in": 1200, "bytes_out": 64000, "requests": 3}

_EVENT = {"id": "evt_7a1c9e3b5d2f4h6j8k0m", "type": "quota.threshold_crossed", "account_id": ACC, "threshold": 0.8,
          "quota_bytes": 10_000_000_000, "used_bytes": 8_000_000_512, "timezone": "UTC",
          "period_start": "2026-12-01T00:00:00Z", "period_end": "2027-01-01T00:00:00Z", "created_at": TS,
          "delivery": {"status": "delivered", "attempts": 1, "http_status": 200,
                       "delivered_at": "2026-12-01T08:00:01Z", "next_attempt_at": None, "given_up_at": None}}

EXAMPLES: dict[str, Any] = {
    "AccountCreate": {"name": "acme", "quota_bytes": 10_000_000_000, "billing_timezone": "Asia/Shanghai"},
    "AccountPatch": {"status": "suspended"},
    "TrafficBatch": {"batch_id": "edge-1-0001", "records": [
        {"account_id": ACC, "node_id": "edge-1", "timestamp_ms": 1_796_112_000_000, **_COUNTS}]},
    "Account": _ACCOUNT,
    "AccountPage": {"accounts": [_ACCOUNT], "next_cursor": "YWNjXzBoM2sybTl4N3ExdzVlOHI0dDZ5"},
    "ApiKey": {"id": "key_5c1b7d0e2f9a8g3h4i6j", "prefix": "mk_Qx3v9Lp", "key": "mk_Qx3v9LpZ...shown-once",
               "account_id": ACC, "created_at": TS},
    "KeyList": {"account_id": ACC, "keys": [{"id": "key_5c1b7d0e2f9a8g3h4i6j", "prefix": "mk_Qx3v9Lp",
                                             "created_at": TS, "last_used_at": "2026-12-01T09:14:00Z",
                                             "revoked_at": None}]},
    "Usage": {"account_id": ACC, "step": "1h", "timezone": "UTC", "start": TS, "end": "2026-12-01T10:00:00Z",
              "points": [{"ts": TS, **_COUNTS}], "totals": _COUNTS},
    "Balance": {"account_id": ACC, "timezone": "UTC", "period_start": "2026-12-01T00:00:00Z",
                "period_end": "2027-01-01T00:00:00Z", "quota_bytes": 10_000_000_000, "used_bytes": 65200,
                "remaining_bytes": 9_999_934_800, "over_quota": False},
    "Events": {"account_id": ACC, "events": [_EVENT]},
    "QuotaEvent": {**_EVENT, "delivery": {"status": "pending", "attempts": 0, "http_status": None,
                                          "delivered_at": None, "next_attempt_at": TS, "given_up_at": None}},
    "WebhookSecret": {"webhook_secret": "whsec_3fQ9...shown-once"},
    "WriteResult": {"batch_id": "edge-1-0001", "accepted": 1, "duplicate": False},
    "BatchStatus": {"batch_id": "edge-1-0001", "status": "applied", "records": 1, "accepted_at": TS,
                    "applied_at": "2026-12-01T08:00:01Z"},
}
EXAMPLES.update(BILLING_EXAMPLES)
BY_MEDIA = {
    "text/csv": "ts,bytes_in,bytes_out,requests\n2026-12-01T08:00:00Z,1200,64000,3\n",
    "application/x-ndjson": '{"ts":"2026-12-01T08:00:00Z","bytes_in":1200,"bytes_out":64000,"requests":3}\n',
    "text/plain": "# TYPE meterd_ingest_records_total counter\nmeterd_ingest_records_total{transport=\"http\"} 3\n",
}
_P = TYPE_BASE
PROBLEM_EXAMPLES = {
    "invalid": {"summary": "400: a field or query parameter is not valid", "value": {
        "type": _P + "invalid-request", "title": "Invalid Request", "status": 400,
        "detail": "unknown query parameter(s): stepp",
        "errors": [{"field": "stepp", "detail": "unknown query parameter"}]}},
    "unauthorized": {"summary": "401: no or wrong credentials", "value": {
        "type": _P + "unauthorized", "title": "Unauthorized", "status": 401,
        "detail": "missing or invalid credentials: send 'Authorization: Bearer <token>'"}},
    "not_found": {"summary": "404: no such account for these credentials", "value": {
        "type": _P + "not-found", "title": "Not Found", "status": 404, "detail": "account not found"}},
    "too_many": {"summary": "429: over the caller's quota", "value": {
        "type": _P + "too-many-requests", "title": "Too Many Requests", "status": 429,
        "detail": "rate limit exceeded; retry after 1 s"}},
}
OPS_EXAMPLES = {"/healthz": {"status": "ok"}, "/readyz": {"status": "ready", "checks": {"db": "ok", "consumer": "ok"}}}

TAGS = [
    {"name": "accounts", "description": "Accounts: create, list, change, suspend, delete (admin)"},
    {"name": "keys", "description": "An account's API keys (admin); secrets are shown once"},
    {"name": "usage", "description": "Usage, balance and quota events"},
    {"name": "billing", "description": "Bills under each cloud's mode, regions, forecasts, month close and "
                                       "adjustments"},
    {"name": "ingestion", "description": "Writing traffic records over HTTP and checking a batch"},
    {"name": "operations", "description": "Health, readiness and metrics: no credentials needed"},
]


def tag_of(path: str) -> str:
    if path.startswith(("/v1/accounts/{account_id}/keys", "/v1/accounts/{account_id}/read-tokens")):
        return "keys"
    if path.startswith("/v1/regions") or any(part in path for part in ("/billing", "/adjustments", "/periods/")):
        return "billing"
    if path.split("/")[-1] in ("usage", "balance", "events"):
        return "usage"
    if path.startswith("/v1/accounts"):
        return "accounts"
    if path.startswith(("/v1/traffic", "/v1/batches")):
        return "ingestion"
    return "operations"


def annotate(paths: dict[str, Any]) -> dict[str, Any]:
    """Tags, examples, and no security requirement (no lock) on the open operations."""
    for path, item in paths.items():
        for method, op in item.items():
            if method == "parameters":
                continue
            op["tags"] = [tag_of(path)]
            if tag_of(path) == "operations":
                op["security"] = []
            for media in (op.get("requestBody", {}).get("content", {})).items():
                _example(*media)
            for response in op["responses"].values():
                for media_type, media in response.get("content", {}).items():
                    _example(media_type, media, OPS_EXAMPLES.get(path))
    return paths


def _example(media_type: str, media: dict[str, Any], fallback: Any = None) -> None:
    ref = media.get("schema", {}).get("$ref", "")
    name = ref.rsplit("/", 1)[-1]
    value = EXAMPLES.get(name, BY_MEDIA.get(media_type, fallback))
    if value is not None:
        media["example"] = value
