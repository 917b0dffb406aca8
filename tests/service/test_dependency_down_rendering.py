""""A dependency is down" reads the same whichever layer noticed it: governance's
DependencyUnavailable or ingest's DependencyDown, per transport."""

from __future__ import annotations

import json

import grpc
from starlette.requests import Request

from governance import DependencyUnavailable
from governance.grpc_aio import retry_metadata
from governance.problem import dependency_reply
from service.api.app import EXCEPTION_HANDLERS, ingest_problem
from service.api.problems import problem_response
from service.grpc_writer import status_for
from service.ingest.errors import DependencyDown


def _request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/v1/traffic", "headers": [], "query_string": b""})


async def test_http_one_problem_type_for_both_errors() -> None:
    governance_headers, governance_body = dependency_reply(DependencyUnavailable("kafka", 2.5))
    via_governance = json.loads(governance_body)
    via_ingest = json.loads(problem_response(ingest_problem(DependencyDown("kafka down", 2.5))).body)
    handler = EXCEPTION_HANDLERS[DependencyUnavailable]
    via_api = json.loads((await handler(_request(), DependencyUnavailable("database", 2.5))).body)
    for doc in (via_governance, via_ingest, via_api):
        assert doc["type"] == "https://meterd.dev/problems/dependency-unavailable"
        assert (doc["status"], doc["title"], doc["retry_after"]) == (503, "Dependency Unavailable", 3)
    assert (b"retry-after", b"3") in governance_headers


def test_grpc_unavailable_carries_the_same_retry_after_trailer() -> None:
    status = status_for(DependencyDown("kafka down", 2.5))
    assert status.code is grpc.StatusCode.UNAVAILABLE
    assert retry_metadata(2.5)[0] in status.trailing_metadata
    assert any(k == "grpc-status-details-bin" for k, _ in status.trailing_metadata)  # RetryInfo too
