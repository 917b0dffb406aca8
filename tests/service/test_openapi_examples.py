"""The OpenAPI document as a reader of /docs meets it: operations grouped by area (tags), an example
for every request body and response (each valid for its model), and no lock on the open endpoints."""

from __future__ import annotations

from typing import Any

import pytest

from service.api.bodies import AccountCreate, AccountPatch
from service.api.openapi import openapi_document
from service.api.schemas import RESPONSE_MODELS, ProblemDetails
from service.api.traffic_json import parse_traffic

MODELS = {m.__name__: m for m in (*RESPONSE_MODELS, AccountCreate, AccountPatch)}
OPEN = {"/healthz", "/readyz", "/metrics"}


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in openapi_document()["paths"].items()
            for method, op in item.items() if method != "parameters"]


def media_objects(op: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, media type, media object) of the request body and every response, $refs resolved."""
    components = openapi_document()["components"]["responses"]
    out = [("request", t, m) for t, m in op.get("requestBody", {}).get("content", {}).items()]
    for status, response in op["responses"].items():
        if "$ref" in response:
            response = components[response["$ref"].rsplit("/", 1)[-1]]
        out += [(status, t, m) for t, m in response.get("content", {}).items()]
    return out


def check_example(schema: dict[str, Any], value: Any) -> None:
    name = schema.get("$ref", "").rsplit("/", 1)[-1]
    if name == "TrafficBatch":
        parse_traffic(value)  # raises on a batch meterd would refuse
    elif name in MODELS:
        MODELS[name].model_validate(value)


def test_every_operation_has_one_declared_tag_and_every_tag_is_used() -> None:
    declared = [t["name"] for t in openapi_document()["tags"]]
    used = set()
    for method, path, op in operations():
        assert len(op.get("tags", [])) == 1 and op["tags"][0] in declared, (method, path, op.get("tags"))
        used.add(op["tags"][0])
    assert used == set(declared)
    assert "default" not in used


@pytest.mark.parametrize("method, path, op", operations(), ids=[f"{m} {p}" for m, p, _ in operations()])
def test_every_request_and_response_has_a_valid_example(method: str, path: str, op: dict[str, Any]) -> None:
    bodies = media_objects(op)
    if method not in ("DELETE",):
        assert bodies, f"{method} {path} documents no body at all"
    for where, media_type, media in bodies:
        assert "example" in media or media.get("examples"), f"{method} {path} {where} {media_type}: no example"
        if "example" in media:
            check_example(media["schema"], media["example"])
        for example in media.get("examples", {}).values():
            ProblemDetails.model_validate(example["value"])


def test_open_endpoints_carry_no_lock_and_the_rest_need_bearer() -> None:
    doc = openapi_document()
    assert doc["security"] == [{"bearer": []}]
    for method, path, op in operations():
        if path in OPEN:
            assert op.get("security") == [], (method, path)
        else:
            assert "security" not in op, (method, path)  # the document-wide bearer requirement
