"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json, and the /docs page."""

from __future__ import annotations

from functools import cache
from typing import Any

_PROBLEM = {"$ref": "#/components/responses/Problem"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _PROBLEM for c in codes}


_ACCOUNT_ID = {"name": "account_id", "in": "path", "required": True, "schema": {"type": "string"}}
_KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
_COUNT = {"type": "integer", "minimum": 0}
_ZONE = {"type": "string", "maxLength": 64, "description": "IANA time zone, e.g. Asia/Shanghai"}
_TOTALS = {"type": "object", "required": ["bytes_in", "bytes_out", "requests"],
           "properties": {"bytes_in": _COUNT, "bytes_out": _COUNT, "requests": _COUNT}}
_BPS = {"type": "object", "required": ["in", "out", "max"],
        "properties": {"in": _COUNT, "out": _COUNT, "max": _COUNT}}
_ALERT_FIELDS = {
    "alert_thresholds": {"type": ["array", "null"], "minItems": 1, "maxItems": 10,
                         "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
                         "description": "fractions of quota_bytes; null: [0.8, 1.0]"},
    "webhook_url": {"type": ["string", "null"], "maxLength": 2048, "pattern": "^https?://[^\\s]+$"}}
_TZ = {"name": "tz", "in": "query", "schema": _ZONE, "description": "IANA zone of the buckets; default UTC"}

_SCHEMAS: dict[str, Any] = {
    "Account": {"type": "object", "required": ["id", "name", "status", "quota_bytes", "billing_timezone",
                                           "alert_thresholds", "webhook_url", "created_at", "updated_at"],
                "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                               "status": {"type": "string", "enum": ["active", "suspended"]},
                               "quota_bytes": {"type": ["integer", "null"], "minimum": 0},
                               "billing_timezone": {"type": "string"},
                               "alert_thresholds": {"type": "array", "items": {"type": "number"}},
                               "webhook_url": {"type": ["string", "null"]},
                               "webhook_secret": {"type": "string",
                                                  "description": "only when first set or rotated: shown once"},
                               "created_at": {"type": "string", "format": "date-time"},
                               "updated_at": {"type": "string", "format": "date-time"}}},
    "AccountCreate": {"type": "object", "required": ["name"], "additionalProperties": False,
                      "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200},
                                     "quota_bytes": {"type": ["integer", "null"], "minimum": 0,
                                                     "maximum": 1 << 62},
                                     "status": {"type": "string", "enum": ["active", "suspended"]},
                                     "billing_timezone": _ZONE, **_ALERT_FIELDS}},
    "AccountPatch": {"type": "object", "additionalProperties": False,
                     "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200},
                                    "quota_bytes": {"type": ["integer", "null"], "minimum": 0, "maximum": 1 << 62},
                                    "status": {"type": "string", "enum": ["active", "suspended"]},
                                    "billing_timezone": _ZONE, **_ALERT_FIELDS}},
    "ApiKey": {"type": "object", "required": ["id", "prefix", "key", "account_id", "created_at"],
               "properties": {"id": {"type": "string"}, "prefix": {"type": "string"},
                              "key": {"type": "string", "description": "shown once; stored hashed"},
                              "account_id": {"type": "string"},
                              "created_at": {"type": "string", "format": "date-time"}}},
    "UsagePoint": {"type": "object", "required": ["ts", "bytes_in", "bytes_out", "requests"],
                   "properties": {"ts": {"type": "string", "format": "date-time"}, "bytes_in": _COUNT,
                                  "bytes_out": _COUNT, "requests": _COUNT}},
    "Usage": {"type": "object", "required": ["account_id", "step", "timezone", "start", "end", "totals"],
              "properties": {"account_id": {"type": "string"}, "step": {"type": "string", "enum": ["1m", "1h", "1d"]},
                             "timezone": {"type": "string"},
                             "node_id": {"type": "array", "items": {"type": "string"}},
                             "series": {"type": "array", "description": "with group_by=node_id", "items": {
                                 "type": "object", "required": ["node_id", "points", "totals"],
                                 "properties": {"node_id": {"type": "string"},
                                                "points": {"type": "array", "items": _ref("UsagePoint")},
                                                "totals": _TOTALS}}},
                             "start": {"type": "string", "format": "date-time"},
                             "end": {"type": "string", "format": "date-time"},
                             "points": {"type": "array", "items": _ref("UsagePoint"),
                                        "description": "buckets with traffic only, oldest first"},
                             "totals": _TOTALS}},
    "Billing": {"type": "object",
                "required": ["account_id", "month", "timezone", "period_start", "period_end", "complete",
                             "intervals", "bytes_in", "bytes_out", "requests", "bandwidth_bps", "quota_bytes",
                             "over_quota"],
                "properties": {"account_id": {"type": "string"}, "month": {"type": "string"},
                               "timezone": {"type": "string"},
                               "period_start": {"type": "string", "format": "date-time"},
                               "period_end": {"type": "string", "format": "date-time"},
                               "complete": {"type": "boolean"}, "intervals": _COUNT, "bytes_in": _COUNT,
                               "bytes_out": _COUNT, "requests": _COUNT,
                               "bandwidth_bps": {"type": "object", "required": ["p95", "peak", "daily_peak_avg"],
                                                 "properties": {"p95": _BPS, "peak": _BPS, "daily_peak_avg": _BPS}},
                               "quota_bytes": {"type": ["integer", "null"]}, "over_quota": {"type": "boolean"}}},
    "QuotaEvent": {"type": "object",
                   "required": ["id", "type", "account_id", "threshold", "quota_bytes", "used_bytes", "timezone",
                                "period_start", "period_end", "created_at"],
                   "properties": {"id": {"type": "string"}, "type": {"type": "string"},
                                  "account_id": {"type": "string"}, "threshold": {"type": "number"},
                                  "quota_bytes": _COUNT, "used_bytes": _COUNT, "timezone": {"type": "string"},
                                  "period_start": {"type": "string", "format": "date-time"},
                                  "period_end": {"type": "string", "format": "date-time"},
                                  "created_at": {"type": "string", "format": "date-time"}}},
    "Balance": {"type": "object",
                "required": ["account_id", "timezone", "period_start", "period_end", "quota_bytes", "used_bytes",
                             "remaining_bytes", "over_quota"],
                "properties": {"account_id": {"type": "string"}, "timezone": {"type": "string"},
                               "period_start": {"type": "string", "format": "date-time"},
                               "period_end": {"type": "string", "format": "date-time"},
                               "quota_bytes": {"type": ["integer", "null"]}, "used_bytes": _COUNT,
                               "remaining_bytes": {"type": ["integer", "null"]}, "over_quota": {"type": "boolean"}}},
    "TrafficRecord": {"type": "object", "required": ["account_id", "node_id", "timestamp_ms"],
                      "additionalProperties": False,
                      "properties": {"account_id": {"type": "string", "minLength": 1},
                                     "node_id": {"type": "string", "minLength": 1, "maxLength": 128},
                                     "timestamp_ms": {"type": "integer", "minimum": 1},
                                     "bytes_in": _COUNT, "bytes_out": _COUNT, "requests": _COUNT}},
    "TrafficBatch": {"type": "object", "required": ["batch_id", "records"], "additionalProperties": False,
                     "properties": {"batch_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
                                    "records": {"type": "array", "minItems": 1,
                                                "items": _ref("TrafficRecord")}}},
    "WriteResult": {"type": "object", "required": ["batch_id", "accepted", "duplicate"],
                    "properties": {"batch_id": {"type": "string"}, "accepted": _COUNT,
                                   "duplicate": {"type": "boolean"}}},
    "ProblemDetails": {"type": "object", "required": ["type", "title", "status"],
                       "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                                      "status": {"type": "integer"}, "detail": {"type": "string"},
                                      "instance": {"type": "string"},
                                      "errors": {"type": "array", "items": {
                                          "type": "object", "properties": {"field": {"type": "string"},
                                                                           "detail": {"type": "string"}}}}}},
}


def _paths() -> dict[str, Any]:
    return {
        "/v1/accounts": {"post": {
            "summary": "Create an account (admin)", "operationId": "createAccount",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("AccountCreate")}}},
            "responses": {"201": _json(_ref("Account"), "created"), **_errors(400, 401, 403, 413, 415)}}},
        "/v1/accounts/{account_id}": {
            "parameters": [_ACCOUNT_ID],
            "get": {"summary": "Read an account (admin or its own key)", "operationId": "getAccount",
                    "responses": {"200": _json(_ref("Account"), "the account"), **_errors(401, 404)}},
            "patch": {"summary": "Change name, status or quota (admin)", "operationId": "patchAccount",
                      "requestBody": {"required": True,
                                      "content": {"application/json": {"schema": _ref("AccountPatch")}}},
                      "responses": {"200": _json(_ref("Account"), "updated"),
                                    **_errors(400, 401, 403, 404, 413, 415)}}},
        "/v1/accounts/{account_id}/keys": {"parameters": [_ACCOUNT_ID], "post": {
            "summary": "Create an API key (admin); the key is shown once", "operationId": "createKey",
            "responses": {"201": _json(_ref("ApiKey"), "created"), **_errors(401, 403, 404)}}},
        "/v1/accounts/{account_id}/keys/{key_id}": {"parameters": [_ACCOUNT_ID, _KEY_ID], "delete": {
            "summary": "Revoke an API key (admin); it stops working at once", "operationId": "revokeKey",
            "responses": {"204": {"description": "revoked"}, **_errors(401, 403, 404)}}},
        "/v1/accounts/{account_id}/usage": {"parameters": [_ACCOUNT_ID], "get": {
            "summary": "Usage in a time window (admin or its own key)", "operationId": "getUsage",
            "parameters": [
                {"name": "start", "in": "query", "schema": {"type": "string", "format": "date-time"},
                 "description": "RFC 3339; default end - 1h"},
                {"name": "end", "in": "query", "schema": {"type": "string", "format": "date-time"},
                 "description": "RFC 3339; default now"},
                {"name": "step", "in": "query", "schema": {"type": "string", "enum": ["1m", "1h", "1d"]}},
                _TZ,
                {"name": "group_by", "in": "query", "schema": {"type": "string", "enum": ["node_id"]},
                 "description": "one series per node (steps 1h and 1d)"},
                {"name": "node_id", "in": "query", "style": "form", "explode": True,
                 "schema": {"type": "array", "maxItems": 100,
                            "items": {"type": "string", "minLength": 1, "maxLength": 128}},
                 "description": "repeatable: only these nodes (steps 1h and 1d)"}],
            "responses": {"200": {"description": "usage (JSON, or CSV / NDJSON on Accept)", "content": {
                "application/json": {"schema": _ref("Usage")},
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}}}},
                **_errors(400, 401, 404, 406)}}},
        "/v1/accounts/{account_id}/billing": {"parameters": [_ACCOUNT_ID], "get": {
            "summary": "95th-percentile bandwidth billing for a month (admin or its own key)",
            "operationId": "getBilling",
            "parameters": [{"name": "month", "in": "query",
                            "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                            "description": "YYYY-MM; default the current month in the zone"},
                           {**_TZ, "description": "default the account's billing_timezone"}],
            "responses": {"200": _json(_ref("Billing"), "billing"), **_errors(400, 401, 404)}}},
        "/v1/accounts/{account_id}/balance": {"parameters": [_ACCOUNT_ID], "get": {
            "summary": "Quota and bytes used this calendar month in the billing time zone (admin or its own key)",
            "operationId": "getBalance",
            "responses": {"200": _json(_ref("Balance"), "balance"), **_errors(401, 404)}}},
        "/v1/accounts/{account_id}/events": {"parameters": [_ACCOUNT_ID], "get": {
            "summary": "Quota threshold crossings, newest first (admin or its own key)", "operationId": "getEvents",
            "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                         "maximum": 500}}],
            "responses": {"200": _json({"type": "object", "required": ["account_id", "events"],
                                        "properties": {"account_id": {"type": "string"},
                                                       "events": {"type": "array", "items": _ref("QuotaEvent")}}},
                                       "events"), **_errors(400, 401, 404)}}},
        "/v1/accounts/{account_id}/webhook-secret": {"parameters": [_ACCOUNT_ID], "post": {
            "summary": "Rotate the webhook signing secret (admin); the new one is shown once",
            "operationId": "rotateWebhookSecret",
            "responses": {"200": _json({"type": "object", "required": ["webhook_secret"],
                                        "properties": {"webhook_secret": {"type": "string"}}}, "rotated"),
                          **_errors(401, 403, 404)}}},
        "/v1/traffic": {"post": {
            "summary": "Write a batch of traffic records (account key: own records only; or admin)",
            "operationId": "postTraffic",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TrafficBatch")}}},
            "responses": {"202": _json(_ref("WriteResult"), "durable in Kafka; duplicate=true for a retry"),
                          **_errors(400, 401, 403, 409, 413, 415, 503)}}},
        "/healthz": {"get": {"summary": "Liveness", "operationId": "healthz",
                             "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "Readiness (database and Kafka)", "operationId": "readyz",
                            "responses": {"200": {"description": "ready"}, "503": _PROBLEM}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                             "responses": {"200": {"description": "text exposition format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    }


@cache
def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "meterd", "version": "1.0.0",
                 "description": "Traffic metering and accounts. Errors are RFC 9457 problem details."},
        "paths": _paths(),
        "components": {
            "schemas": _SCHEMAS,
            "responses": {"Problem": {"description": "RFC 9457 problem details",
                                      "content": {"application/problem+json": {"schema": _ref("ProblemDetails")}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "the admin token or an account API key"}},
        },
        "security": [{"bearer": []}],
    }


DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>meterd API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="docs">Loading the interactive API docs; the raw description is at
<a href="/openapi.json">/openapi.json</a>.</div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>window.onload = () => SwaggerUIBundle({url: "/openapi.json", dom_id: "#docs"});</script>
</body></html>"""
