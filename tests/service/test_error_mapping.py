"""Issue 25: an ingest error carries its own mapping, so a new one is answered right over HTTP and
gRPC without touching either renderer, and every mapping names a real gRPC code."""

from __future__ import annotations

import json

import grpc

from service.api.app import ingest_problem
from service.api.problems import problem_response
from service.grpc_writer import status_for
from service.ingest import errors
from service.ingest.errors import IngestError


class TooLarge(IngestError):  # a new error, declared here only
    status, http_title, slug, grpc_code = 413, "Batch Too Large", "batch-too-large", "RESOURCE_EXHAUSTED"
    shows_detail = True


def test_a_new_error_is_rendered_from_its_own_mapping() -> None:
    body = json.loads(problem_response(ingest_problem(TooLarge("batch over 4 MiB"))).body)
    assert (body["status"], body["title"], body["detail"]) == (413, "Batch Too Large", "batch over 4 MiB")
    assert body["type"].endswith("/batch-too-large")
    status = status_for(TooLarge("batch over 4 MiB"))
    assert (status.code, status.details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "batch over 4 MiB")


def test_an_unexpected_error_keeps_its_detail_from_the_client() -> None:
    body = json.loads(problem_response(ingest_problem(IngestError("secret internals"))).body)
    assert (body["status"], body["detail"]) == (500, "internal error")
    status = status_for(IngestError("secret internals"))
    assert (status.code, status.details) == (grpc.StatusCode.INTERNAL, "internal error")


def test_every_ingest_error_names_a_real_grpc_code_and_an_http_status() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, IngestError)]
    assert len(classes) >= 6
    for cls in classes:
        assert hasattr(grpc.StatusCode, cls.grpc_code), cls
        assert 400 <= cls.status < 600, cls
