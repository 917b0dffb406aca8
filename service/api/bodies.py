"""Request-body parsing: size cap, JSON decoding, and pydantic models for the account API."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.requests import Request

from service.api.messages import phrase
from service.api.problems import Problem, invalid
from service.api.timeparams import is_zone
from service.billing_plan import BillingPlan
from service.ingest.validate import NODE_ID, NODE_ID_PATTERN, NODE_ID_RULE

MAX_QUOTA = 1 << 62
M = TypeVar("M", bound=BaseModel)


async def read_json(request: Request, max_bytes: int, timeout: float) -> Any:
    # JSON types and curl -d's default form type are parsed as JSON (others are 415); a body that
    # is not JSON gets a 400 that says so.
    refuse_unsupported_media(request)
    body = await read_body(request, max_bytes, timeout)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, "Malformed JSON", f"the body is not valid JSON: {exc}", slug="malformed-json") from None


# JSON, and what curl -d sends when no type is given (the body is still parsed as JSON).
ACCEPTED_TYPES = ("application/json", "application/x-www-form-urlencoded")


def refuse_unsupported_media(request: Request) -> None:
    """415 before reading: a compressed body or a non-JSON type would otherwise fail as bad JSON."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Problem(415, "Unsupported Media Type",
                      f"Content-Encoding {encoding} is not supported: send the JSON body uncompressed")
    media = request.headers.get("content-type", "application/json").split(";", 1)[0].strip().lower()
    if media and media not in ACCEPTED_TYPES and not (media.startswith("application/") and media.endswith("+json")):
        raise Problem(415, "Unsupported Media Type", f"Content-Type {media} is not supported: send application/json")


async def read_body(request: Request, max_bytes: int, timeout: float) -> bytes:
    """The body, refused (413) as soon as it is known to exceed max_bytes: from Content-Length
    before reading, else while reading; 408 when it takes longer than `timeout`."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise Problem(413, "Content Too Large", f"request body exceeds {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        # A body trickled in a byte at a time must not hold a connection and a task for ever.
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise Problem(413, "Content Too Large", f"request body exceeds {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise Problem(408, "Request Timeout", f"request body not received within {timeout:g} s",
                      headers={"Connection": "close"}) from None
    return b"".join(chunks)


def parse_model(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid([phrase(e) for e in exc.errors()]) from None


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


def _zone(value: str) -> str:
    if not is_zone(value):
        raise ValueError("must be an IANA time zone name such as Asia/Shanghai or UTC")
    return value


Zone = Annotated[str, StringConstraints(max_length=64), AfterValidator(_zone)]


def _node_id(value: str) -> str:
    if not NODE_ID.fullmatch(value):
        raise ValueError(NODE_ID_RULE)
    return value


# Ingest's rule (a look-ahead pydantic's regex engine lacks, hence a validator) with its pattern documented.
NodeId = Annotated[str, StringConstraints(max_length=128), AfterValidator(_node_id),
                   Field(json_schema_extra={"pattern": NODE_ID_PATTERN})]
# Fractions of quota_bytes (1.0 = the quota); above 1 alerts on overage too.
Thresholds = Annotated[list[Annotated[float, Field(gt=0, le=10)]], Field(min_length=1, max_length=10)]
WebhookUrl = Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://[^\s]+$")]


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    quota_bytes: Annotated[int, Field(ge=0, le=MAX_QUOTA, strict=True)] | None = None
    status: Literal["active", "suspended"] = "active"
    billing_timezone: Zone = "UTC"
    alert_thresholds: Thresholds | None = None
    webhook_url: WebhookUrl | None = None
    billing_plan: BillingPlan | None = None


class AccountPatch(BaseModel):
    """Only the fields sent change. name, status and billing_timezone cannot be null (the default
    None only means "not sent"); alert_thresholds and webhook_url take null to reset."""
    model_config = ConfigDict(extra="forbid")
    name: Name = None  # type: ignore[assignment]
    quota_bytes: Annotated[int, Field(ge=0, le=MAX_QUOTA, strict=True)] | None = None
    status: Literal["active", "suspended"] = None  # type: ignore[assignment]
    billing_timezone: Zone = None  # type: ignore[assignment]
    alert_thresholds: Thresholds | None = None  # null: back to the default [0.8, 1.0]
    webhook_url: WebhookUrl | None = None  # null: no webhook
    billing_plan: BillingPlan | None = None  # replaces the stored plan; null: back to the default
