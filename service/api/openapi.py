"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json, and the /docs page.

Schemas come from the pydantic models (service.api.bodies for requests, service.api.schemas for
responses); paths and query parameters, which are parsed by hand, are written out below."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from service.api.adjustments_api import AdjustmentCreate
from service.api.bodies import AccountCreate, AccountPatch
from service.api.openapi_examples import PROBLEM_EXAMPLES, TAGS, annotate
from service.api.schemas import RESPONSE_MODELS
from service.api.tokens_api import ReadTokenCreate
from service.billing_plan import DAY_RULES, DIRECTIONS, MODES
from service.ingest.validate import NODE_ID_PATTERN

_PROBLEM = {"$ref": "#/components/responses/Problem"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    # Every authenticated operation can also answer 429: the caller's quota, or (no or bad
    # credentials) the per-address budget checked before the credential lookup.
    return {str(c): _PROBLEM for c in (*codes, 429) if c != 429 or 401 in codes}


_ACCOUNT_ID = {"name": "account_id", "in": "path", "required": True, "schema": {"type": "string"}}
_KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
_EVENT_ID = {"name": "event_id", "in": "path", "required": True, "schema": {"type": "string"}}
_BATCH_ID = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}
_COUNT = {"type": "integer", "minimum": 0}
_ZONE = {"type": "string", "maxLength": 64, "description": "IANA time zone, e.g. Asia/Shanghai"}
_PLAN_OVERRIDES = [{"name": name, "in": "query", "schema": {"type": "string", "enum": list(values)},
                    "description": f"put over the account's billing_plan.{name}"}
                   for name, values in (("mode", MODES), ("direction", DIRECTIONS), ("days", DAY_RULES))]
_REGION_FILTER = {"name": "region", "in": "query", "style": "form", "explode": True,
                  "schema": {"type": "array", "maxItems": 100,
                             "items": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"}},
                  "description": "billing regions (usage: repeatable; billing: one, whose bill is returned)"}
_REGION = {"name": "region", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"}}
_NODE_ID = {"name": "node_id", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": NODE_ID_PATTERN},
            "description": "ingest's node id; '/' in it is sent as is (or as %2F)"}
_TZ = {"name": "tz", "in": "query", "schema": _ZONE, "description": "IANA zone of the buckets; default UTC"}

# The traffic body is parsed by service.api.traffic_json into the protobuf records the gRPC writer
# takes (one validation for both transports), so its schema is written out here.
_TRAFFIC_SCHEMAS: dict[str, Any] = {
    "TrafficRecord": {"type": "object", "required": ["account_id", "node_id", "timestamp_ms"],
                      "additionalProperties": False,
                      "properties": {"account_id": {"type": "string", "minLength": 1},
                                     "node_id": {"type": "string", "pattern": NODE_ID_PATTERN},
                                     "timestamp_ms": {"type": "integer", "minimum": 1},
                                     "bytes_in": _COUNT, "bytes_out": _COUNT, "requests": _COUNT}},
    "TrafficBatch": {"type": "object", "required": ["batch_id", "records"], "additionalProperties": False,
                     "properties": {"batch_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
                                    "records": {"type": "array", "minItems": 1,
                                                "items": _ref("TrafficRecord")}}},
}


def _clean(node: Any) -> Any:
    # "default": null on a non-nullable response field only means "sometimes absent".
    if isinstance(node, dict):
        return {k: _clean(v) for k, v in node.items() if not (k == "default" and v is None)}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def _schemas() -> dict[str, Any]:
    """Components generated from the pydantic models: request bodies as they validate, responses
    as they are served."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(AccountCreate, "validation"), (AccountPatch, "validation"),
                                                             (ReadTokenCreate, "validation"),
                                                             (AdjustmentCreate, "validation")]
    models += [(m, "serialization") for m in RESPONSE_MODELS]
    _, top = models_json_schema(models, ref_template="#/components/schemas/{model}")
    return {**_clean(top["$defs"]), **_TRAFFIC_SCHEMAS}


def _paths() -> dict[str, Any]:
    return {
        "/v1/accounts": {"get": {
            "summary": "List accounts, by id, a page at a time (admin); deleted ones only with status=deleted",
            "operationId": "listAccounts",
            "parameters": [
                {"name": "status", "in": "query", "schema": {"type": "string",
                                                             "enum": ["active", "suspended", "deleted"]}},
                {"name": "name", "in": "query", "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                 "description": "case-insensitive substring of the name"},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                 "description": "default 100"},
                {"name": "cursor", "in": "query", "schema": {"type": "string"},
                 "description": "next_cursor of the previous page"}],
            "responses": {"200": _json(_ref("AccountPage"), "a page of accounts"), **_errors(400, 401, 403)}},
            "post": {
            "summary": "Create an account (admin)", "operationId": "createAccount",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("AccountCreate")}}},
            "responses": {"201": _json(_ref("Account"), "created"), **_errors(400, 401, 403, 413, 415)}}},
        "/v1/accounts/{account_id}": {
            "parameters": [_ACCOUNT_ID],
            "get": {"summary": "Read an account (admin or its own key)", "operationId": "getAccount",
                    "responses": {"200": _json(_ref("Account"), "the account"), **_errors(401, 404)}},
            "patch": {"summary": "Change name, status, quota, billing zone, alert thresholds, webhook URL (admin)",
                      "operationId": "patchAccount",
                      "requestBody": {"required": True,
                                      "content": {"application/json": {"schema": _ref("AccountPatch")}}},
                      "responses": {"200": _json(_ref("Account"), "updated"),
                                    **_errors(400, 401, 403, 404, 409, 413, 415)}},
            "delete": {"summary": "Delete an account (admin): its keys are revoked, its usage is kept and stays "
                                  "readable by the admin", "operationId": "deleteAccount",
                       "responses": {"204": {"description": "deleted"}, **_errors(401, 403, 404)}}},
        "/v1/accounts/{account_id}/keys": {"parameters": [_ACCOUNT_ID], "post": {
            "summary": "Create an API key (admin); the key is shown once", "operationId": "createKey",
            "responses": {"201": _json(_ref("ApiKey"), "created"), **_errors(401, 403, 404, 409)}},
            "get": {"summary": "List an account's keys (admin): prefixes and times, never the secrets",
                    "operationId": "listKeys",
                    "responses": {"200": _json(_ref("KeyList"), "the keys, oldest first"),
                                  **_errors(401, 403, 404)}}},
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
                {"name": "group_by", "in": "query", "schema": {"type": "string", "enum": ["node_id", "region"]},
                 "description": "one series per node or per billing region (steps 1h and 1d; region: JSON only)"},
                _REGION_FILTER,
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
            "summary": "Bandwidth billing for a month under the account's billing plan (admin or its own key)",
            "operationId": "getBilling",
            "parameters": [{"name": "month", "in": "query",
                            "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                            "description": "YYYY-MM; default the current month in the zone"},
                           {**_TZ, "description": "default the account's billing_timezone"},
                           *_PLAN_OVERRIDES, _REGION_FILTER,
                           {"name": "group_by", "in": "query", "schema": {"type": "string", "enum": ["region"]},
                            "description": "also one bill per billing region"}],
            "responses": {"200": _json(_ref("Billing"), "billing"), **_errors(400, 401, 404)}}},
        "/v1/accounts/{account_id}/balance": {"parameters": [_ACCOUNT_ID], "get": {
            "summary": "Quota and bytes used this calendar month in the billing time zone (admin or its own key)",
            "operationId": "getBalance",
            "responses": {"200": _json(_ref("Balance"), "balance"), **_errors(401, 404)}}},
        "/v1/accounts/{account_id}/events": {"parameters": [_ACCOUNT_ID], "get": {
            "summary": "Quota threshold crossings, newest first (admin or its own key)", "operationId": "getEvents",
            "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                         "maximum": 500}}],
            "responses": {"200": _json(_ref("Events"), "events"), **_errors(400, 401, 404)}}},
        "/v1/accounts/{account_id}/events/{event_id}/redeliver": {"parameters": [_ACCOUNT_ID, _EVENT_ID], "post": {
            "summary": "Send an event's webhook again, now, with a fresh retry budget (admin)",
            "operationId": "redeliverEvent",
            "responses": {"202": _json(_ref("QuotaEvent"), "queued: the event with its delivery, now pending"),
                          **_errors(401, 403, 404, 409)}}},
        "/v1/accounts/{account_id}/webhook-secret": {"parameters": [_ACCOUNT_ID], "post": {
            "summary": "Rotate the webhook signing secret (admin); the new one is shown once, and the old "
                       "one keeps signing beside it for webhooks.secret_overlap_seconds",
            "operationId": "rotateWebhookSecret",
            "responses": {"200": _json(_ref("WebhookSecret"), "rotated"),
                          **_errors(401, 403, 404)}}},
        "/v1/accounts/{account_id}/billing/forecast": {"parameters": [_ACCOUNT_ID], "get": {
            "summary": "Every billing mode projected to the month's end, and the cheapest at the plan's prices "
                       "(admin, its own key or read-only token)",
            "operationId": "getBillingForecast",
            "parameters": [{"name": "month", "in": "query",
                            "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                            "description": "YYYY-MM; default the current month in the zone"},
                           {**_TZ, "description": "default the account's billing_timezone"},
                           *_PLAN_OVERRIDES[1:]],
            "responses": {"200": _json(_ref("Forecast"), "forecast"), **_errors(400, 401, 404)}}},
        "/v1/accounts/{account_id}/periods/{month}/close": {
            "parameters": [_ACCOUNT_ID, {"name": "month", "in": "path", "required": True,
                                         "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"}}],
            "post": {"summary": "Close an ended billing month (admin): its bill is stored and served byte for "
                                "byte from then on", "operationId": "closePeriod",
                     "responses": {"200": _json(_ref("Billing"), "the frozen bill"),
                                   **_errors(400, 401, 403, 404, 409)}}},
        "/v1/accounts/{account_id}/adjustments": {"parameters": [_ACCOUNT_ID], "post": {
            "summary": "Adjust usage at a (node, 5-minute interval) by a signed delta (admin); an idempotency "
                       "key makes a retry count once", "operationId": "createAdjustment",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("AdjustmentCreate")}}},
            "responses": {"201": _json(_ref("Adjustment"), "applied"), "200": _json(_ref("Adjustment"), "a replay"),
                          **_errors(400, 401, 403, 404, 409, 413)}},
            "get": {"summary": "A month's adjustments (admin, its own key or read-only token)",
                    "operationId": "listAdjustments",
                    "parameters": [{"name": "month", "in": "query",
                                    "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"}}],
                    "responses": {"200": _json(_ref("Adjustments"), "adjustments"), **_errors(400, 401, 404)}}},
        "/v1/accounts/{account_id}/read-tokens": {"parameters": [_ACCOUNT_ID], "post": {
            "summary": "Issue a read-only token for the account (admin or its own key; not a read-only token)",
            "operationId": "createReadToken",
            "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("ReadTokenCreate")}}},
            "responses": {"201": _json(_ref("ReadToken"), "created; the token is shown once"),
                          **_errors(400, 401, 403, 404, 409, 413)}},
            "get": {"summary": "Live read-only tokens of the account, without secrets (admin or its own key)",
                    "operationId": "listReadTokens",
                    "responses": {"200": _json(_ref("ReadTokens"), "tokens"), **_errors(401, 403, 404)}}},
        "/v1/accounts/{account_id}/read-tokens/{token_id}": {
            "parameters": [_ACCOUNT_ID, {"name": "token_id", "in": "path", "required": True,
                                         "schema": {"type": "string"}}],
            "delete": {"summary": "Revoke a read-only token (admin or the account's own key)",
                       "operationId": "revokeReadToken",
                       "responses": {"204": {"description": "revoked"}, **_errors(401, 403, 404)}}},
        "/v1/regions": {"get": {
            "summary": "The node -> billing region map and the nodes without a region (admin)",
            "operationId": "getRegions",
            "responses": {"200": _json(_ref("Regions"), "regions"), **_errors(401, 403)}}},
        "/v1/regions/{region}/nodes/{node_id}": {"parameters": [_REGION, _NODE_ID], "put": {
            "summary": "Put a node in a billing region (admin); applies to usage counted from now on",
            "operationId": "putNodeRegion",
            "responses": {"200": _json(_ref("NodeRegion"), "mapped"), **_errors(400, 401, 403, 409)}},
            "delete": {"summary": "Take a node out of a region (admin): it bills in the default region again",
                       "operationId": "deleteNodeRegion",
                       "responses": {"204": {"description": "removed"}, **_errors(400, 401, 403, 404)}}},
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
                             "responses": {"200": _json({"type": "object"}, "alive")}}},
        "/readyz": {"get": {"summary": "Readiness (database, Kafka when configured, consumer): one status per "
                                       "dependency (ok, failing, timeout), checked at most once a second; details "
                                       "only in the log",
                            "operationId": "readyz",
                            "responses": {"200": _json({"type": "object"}, "ready"), "503": _PROBLEM}}},
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
        "tags": TAGS,
        "paths": annotate(_paths()),
        "components": {
            "schemas": _schemas(),
            "responses": {"Problem": {"description": "RFC 9457 problem details", "content": {
                "application/problem+json": {"schema": _ref("ProblemDetails"), "examples": PROBLEM_EXAMPLES}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "the admin token or an account API key"}},
        },
        "security": [{"bearer": []}],
    }
