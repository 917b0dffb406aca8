"""Requests are read strictly and answered in one voice: unknown query parameters are refused like
unknown body fields, validation messages are meterd's own (bounds stated, no library wording),
unsupported encodings get 415, and a 405 lists every method the path has."""

from __future__ import annotations

import gzip
import re

import orjson
import pytest

from tests.service.conftest import Meterd, assert_problem, unique

LIBRARY_VOICE = re.compile(r"Value error|Input should|String should|List should|Field required|\^|\$'|\[\^")


@pytest.mark.parametrize("path, params, unknown", [
    ("/v1/accounts/{acc}/usage", {"stepp": "1h"}, ["stepp"]),
    ("/v1/accounts/{acc}/usage", {"step": "1h", "zone": "UTC", "x": "1"}, ["x", "zone"]),
    ("/v1/accounts/{acc}/balance", {"month": "2026-01"}, ["month"]),
    ("/v1/accounts/{acc}/events", {"limt": "5"}, ["limt"]),
    ("/v1/accounts/{acc}", {"verbose": "1"}, ["verbose"]),
    ("/v1/accounts", {"nme": "x"}, ["nme"]),
])
def test_unknown_query_parameters_are_400_naming_them(meterd: Meterd, path: str, params: dict,
                                                      unknown: list[str]) -> None:
    account, _ = meterd.new_account(unique("strict"))
    problem = assert_problem(meterd.admin.get(path.format(acc=account), params=params), 400)
    assert [e["field"] for e in problem["errors"]] == unknown, problem
    assert all("unknown query parameter" in e["detail"] for e in problem["errors"]), problem
    assert ", ".join(unknown) in problem["detail"]


def test_known_query_parameters_still_work(meterd: Meterd) -> None:
    account, _ = meterd.new_account(unique("strict"))
    resp = meterd.admin.get(f"/v1/accounts/{account}/usage", params={"step": "1h", "tz": "UTC"})
    assert resp.status_code == 200, resp.text
    resp = meterd.admin.get(f"/v1/accounts/{account}/usage", params=[("step", "1h"), ("node_id", "a"),
                                                                       ("node_id", "b")])
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("body, field, needle", [
    ({"name": "x", "quota_bytes": orjson.Fragment(b"99999999999999999999999")}, "quota_bytes",
     "from 0 to 4611686018427387904"),
    ({"name": "x", "quota_bytes": 1 << 63}, "quota_bytes", "from 0 to 4611686018427387904"),
    ({"name": "x", "quota_bytes": 1.5}, "quota_bytes", "integer"),
    ({"name": "x", "webhook_url": "ftp://hooks"}, "webhook_url", "http:// or https:// URL"),
    ({"name": "x", "billing_timezone": "Mars/Base"}, "billing_timezone", "IANA time zone"),
    ({"name": "x", "status": "gone"}, "status", "one of active, suspended"),
    ({"name": "x", "alert_thresholds": [0]}, "alert_thresholds[0]", "above 0 and at most 10"),
    ({"name": "x", "alert_thresholds": []}, "alert_thresholds", "1 to 10"),
    ({"name": ""}, "name", "1 to 200 characters"),
    ({}, "name", "is required"),
    ({"name": "x", "extra": 1}, "extra", "unknown field"),
])
def test_validation_messages_are_in_meterds_voice_with_bounds(meterd: Meterd, body: dict, field: str,
                                                              needle: str) -> None:
    resp = meterd.admin.post("/v1/accounts", content=orjson.dumps(body),
                             headers={"content-type": "application/json"})
    problem = assert_problem(resp, 400)
    (error,) = problem["errors"]
    assert error["field"] == field, problem
    assert needle in error["detail"], problem
    assert not LIBRARY_VOICE.search(error["detail"]) and not LIBRARY_VOICE.search(problem["detail"]), problem


def test_a_gzip_body_or_a_non_json_type_is_415(meterd: Meterd) -> None:
    body = orjson.dumps({"name": "zipped"})
    zipped = meterd.admin.post("/v1/accounts", content=gzip.compress(body),
                               headers={"content-type": "application/json", "content-encoding": "gzip"})
    problem = assert_problem(zipped, 415)
    assert "gzip" in problem["detail"]
    xml = meterd.admin.post("/v1/accounts", content=b"<account/>", headers={"content-type": "application/xml"})
    assert "application/xml" in assert_problem(xml, 415)["detail"]
    # What curl -d sends by default is still read as JSON (the README's examples set the type anyway).
    form = meterd.admin.post("/v1/accounts", content=body,
                             headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 201, form.text
    charset = meterd.admin.post("/v1/accounts", content=body,
                                headers={"content-type": "application/json; charset=utf-8"})
    assert charset.status_code == 201, charset.text


def test_405_allow_lists_every_method_of_the_path(meterd: Meterd) -> None:
    account, _ = meterd.new_account(unique("allow"))
    resp = meterd.admin.put(f"/v1/accounts/{account}", json={})
    assert_problem(resp, 405)
    assert set(resp.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "PATCH", "DELETE"}, resp.headers
    keys = meterd.admin.put(f"/v1/accounts/{account}/keys")
    assert set(keys.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}
    listing = meterd.admin.delete("/v1/accounts")
    assert set(listing.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}


def test_a_window_with_too_many_steps_names_step_and_the_count(meterd: Meterd) -> None:
    account, _ = meterd.new_account(unique("steps"))
    resp = meterd.admin.get(f"/v1/accounts/{account}/usage",
                            params={"step": "1m", "start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"})
    problem = assert_problem(resp, 400)
    assert problem["errors"][0]["field"] == "step"
    assert "525600 1m steps, more than 10000" in problem["errors"][0]["detail"], problem
