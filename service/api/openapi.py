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
_BATCH_ID = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}
_COUNT = {"type": "integer", "minimum": 0}

_SCHEMAS: dict[str, Any] = {
    "BatchStatus": {"type": "object", "required": ["batch_id", "status", "records", "accepted_at", "applied_at"],
                    "properties": {"batch_id": {"type": "string"},
                                   "status": {"type": "string", "enum": ["applied", "pending"]},
                                   "records": _COUNT,
                                   "accepted_at": {"type": "string", "format": "date-time"},
                                   "applied_at": {"type": ["string", "null"], "format": "date-time"}}},
    "Account": {"type": "object", "required": ["id", "name", "status", "quota_bytes", "created_at", "updated_at"],
                "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                               "status": {"type": "string", "enum": ["active", "suspended"]},
                               "quota_bytes": {"type": ["integer", "null"], "minimum": 0},
                               "created_at": {"type": "string", "format": "date-time"},
                               "updated_at": {"type": "string", "format": "date-time"}}},
    "AccountCreate": {"type": "object", "required": ["name"], "additionalProperties": False,
                      "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200},
                                     "quota_bytes": {"type": ["integer", "null"], "minimum": 0,
                                                     "maximum": 1 << 62},
                                     "status": {"type": "string", "enum": ["active", "suspended"]}}},
    "AccountPatch": {"type": "object", "additionalProperties": False,
                     "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200},
                                    "quota_bytes": {"type": ["integer", "null"], "minimum": 0, "maximum": 1 << 62},
                                    "status": {"type": "string", "enum": ["active", "suspended"]}}},
    "ApiKey": {"type": "object", "required": ["id", "prefix", "key", "account_id", "created_at"],
               "properties": {"id": {"type": "string"}, "prefix": {"type": "string"},
                              "key": {"type": "string", "description": "shown once; stored hashed"},
                              "account_id": {"type": "string"},
                              "created_at": {"type": "string", "format": "date-time"}}},
    "UsagePoint": {"type": "object", "required": ["ts", "bytes_in", "bytes_out", "requests"],
                   "properties": {"ts": {"type": "string", "format": "date-time"}, "bytes_in": _COUNT,
                                  "bytes_out": _COUNT, "requests": _COUNT}},
    "Usage": {"type": "object", "required": ["account_id", "step", "start", "end", "points", "totals"],
              "properties": {"account_id": {"type": "string"}, "step": {"type": "string", "enum": ["1m", "1h", "1d"]},
                             "start": {"type": "string", "format": "date-time"},
                             "end": {"type": "string", "format": "date-time"},
                             "points": {"type": "array", "items": _ref("UsagePoint"),
                                        "description": "buckets with traffic only, oldest first"},
                             "totals": {"type": "object", "required": ["bytes_in", "bytes_out", "requests"],
                                        "properties": {"bytes_in": _COUNT, "bytes_out": _COUNT,
                                                       "requests": _COUNT}}}},
    "Balance": {"type": "object",
                "required": ["account_id", "period_start", "quota_bytes", "used_bytes", "remaining_bytes",
                             "over_quota"],
                "properties": {"account_id": {"type": "string"},
                               "period_start": {"type": "string", "format": "date-time"},
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
                {"name": "step", "in": "query", "schema": {"type": "string", "enum": ["1m", "1h", "1d"]}}],
            "responses": {"200": _json(_ref("Usage"), "usage"), **_errors(400, 401, 404)}}},
        "/v1/accounts/{account_id}/balance": {"parameters": [_ACCOUNT_ID], "get": {
            "summary": "Quota and bytes used this calendar month, UTC (admin or its own key)",
            "operationId": "getBalance",
            "responses": {"200": _json(_ref("Balance"), "balance"), **_errors(401, 404)}}},
        "/v1/traffic": {"post": {
            "summary": "Write a batch of traffic records (account key: own records only; or admin)",
            "operationId": "postTraffic",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TrafficBatch")}}},
            "responses": {"202": _json(_ref("WriteResult"), "durable in the log; duplicate=true for a retry"),
                          **_errors(400, 401, 403, 409, 413, 415, 503)}}},
        "/v1/batches/{batch_id}": {"parameters": [_BATCH_ID], "get": {
            "summary": "Whether a batch written with these credentials was counted",
            "operationId": "getBatch",
            "responses": {"200": _json(_ref("BatchStatus"), "applied or pending"), **_errors(401, 404)}}},
        "/healthz": {"get": {"summary": "Liveness", "operationId": "healthz",
                             "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "Readiness (database, Kafka when configured, consumer): one status per "
                                       "dependency (ok, failing, timeout), checked at most once a second; details "
                                       "only in the log",
                            "operationId": "readyz",
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
