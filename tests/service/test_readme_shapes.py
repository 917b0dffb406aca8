"""Every response shape the README writes out (`{a, b, c: [{d}]}` in the HTTP API table, the billing
and quota-event paragraphs) compared with what a real `meterd up` answers: a documented field that
is not served, or a served field that is not documented, fails (`...` in a shape means "and more")."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import Meterd, now_ms, record, unique
from tests.support.meterd import wait_until

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def first_shape(text: str) -> str:
    start = text.index("{")
    depth = 0
    for i, ch in enumerate(text[start:], start):
        depth += ch in "{["
        depth -= ch in "}]"
        if depth == 0:
            return text[start:i + 1]
    raise AssertionError(f"unbalanced shape in {text[:80]!r}")


def fields(shape: str) -> dict[str, str | None]:
    """'{a, b: {x}, c:[{z}], ...}' -> {'a': None, 'b': '{x}', 'c': '[{z}]', '...': None}"""
    parts, depth, current = [], 0, ""
    for ch in shape.strip()[1:-1]:
        depth += ch in "{["
        depth -= ch in "}]"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    out: dict[str, str | None] = {}
    for part in (p.strip() for p in parts if p.strip()):
        name, _, value = part.partition(":")
        out[name.strip().strip('"')] = value.strip() or None
    return out


def compare(shape: str, value: Any, where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: served {type(value).__name__}, documented {shape}"]
    documented = fields(shape)
    names = set(documented) - {"..."}
    problems = []
    if names - set(value):
        problems.append(f"{where}: documented but not served: {sorted(names - set(value))}")
    if set(value) - names and "..." not in documented:
        problems.append(f"{where}: served but not documented: {sorted(set(value) - names)}")
    for name, sub in documented.items():
        if not sub or name not in value:
            continue
        if sub.startswith("{") and "..." not in sub:
            problems += compare(sub, value[name], f"{where}.{name}")
        elif sub.startswith("[{"):
            for i, item in enumerate(value[name]):
                problems += compare(sub[1:-1], item, f"{where}.{name}[{i}]")
    return problems


def table_shapes() -> dict[str, str]:
    """'METHOD /path' (no query) -> the first {...} of its result cell, for rows that write one out."""
    section = README.split("## HTTP API", 1)[1].split("\n## ", 1)[0]
    shapes = {}
    for line in section.splitlines():
        row = line.replace("\\|", "\0").strip().strip("|")  # an escaped | is text, not a cell border
        cells = [c.strip().replace("\0", "|") for c in row.split("|")] if line.startswith("| ") else []
        if len(cells) < 3 or "`{" not in cells[-1]:
            continue
        result = cells[-1]
        shapes[cells[0].split("?")[0]] = first_shape(result[result.index("`{") + 1:])
    return shapes


def paragraph_shape(marker: str) -> str:
    """The first `{...}` (in backticks) after the marker."""
    text = README.split(marker, 1)[1]
    return first_shape(text[text.index("`{") + 1:])


def test_the_comparison_can_fail() -> None:
    assert compare("{a, b: {c}}", {"a": 1, "b": {"c": 2}}, "x") == []
    assert compare("{a, b}", {"a": 1}, "x") == ["x: documented but not served: ['b']"]
    assert compare("{a}", {"a": 1, "z": 2}, "x") == ["x: served but not documented: ['z']"]
    assert compare("{a, ...}", {"a": 1, "z": 2}, "x") == []
    assert compare("{a:[{b}]}", {"a": [{"b": 1, "c": 2}]}, "x") == ["x.a[0]: served but not documented: ['c']"]


@pytest.fixture(scope="module")
def served(meterd: Meterd) -> dict[str, Any]:
    """One real response for each documented shape."""
    admin = meterd.admin
    created = admin.post("/v1/accounts", json={"name": unique("shapes"), "quota_bytes": 1000})
    account = created.json()["id"]
    key = admin.post(f"/v1/accounts/{account}/keys")
    batch = unique("shapes")
    with meterd.client(key.json()["key"]) as own:
        written = own.post("/v1/traffic", json={"batch_id": batch, "records": [record(account, now_ms(),
                                                                                     bytes_in=900)]})
        wait_until(lambda: own.get(f"/v1/batches/{batch}").json().get("status") == "applied", message="applied")
        lookup = own.get(f"/v1/batches/{batch}")
    wait_until(lambda: admin.get(f"/v1/accounts/{account}/events").json()["events"], message="a quota event")
    calls: dict[str, Callable[[], httpx.Response]] = {
        "GET /v1/accounts": lambda: admin.get("/v1/accounts", params={"limit": 1}),
        "POST /v1/accounts": lambda: created,
        "GET /v1/accounts/{id}/keys": lambda: admin.get(f"/v1/accounts/{account}/keys"),
        "POST /v1/accounts/{id}/keys": lambda: key,
        "GET /v1/accounts/{id}/usage": lambda: admin.get(f"/v1/accounts/{account}/usage", params={"step": "1m"}),
        "GET /v1/accounts/{id}/balance": lambda: admin.get(f"/v1/accounts/{account}/balance"),
        "GET /v1/accounts/{id}/billing": lambda: admin.get(f"/v1/accounts/{account}/billing"),
        "GET /v1/accounts/{id}/events": lambda: admin.get(f"/v1/accounts/{account}/events"),
        "POST /v1/accounts/{id}/webhook-secret": lambda: admin.post(f"/v1/accounts/{account}/webhook-secret"),
        "POST /v1/traffic": lambda: written,
        "GET /v1/batches/{batch_id}": lambda: lookup,
        "GET /healthz, /readyz, /metrics, /openapi.json, /docs": lambda: admin.get("/readyz"),
        "POST /v1/accounts/{id}/adjustments": lambda: admin.post(f"/v1/accounts/{account}/adjustments", json={
            "idempotency_key": unique("shapes"), "node_id": "shapes-node", "bytes_in": 1, "reason": "shapes",
            "interval": time.strftime("%Y-%m-01T00:00:00Z", time.gmtime())}),
        "GET /v1/accounts/{id}/adjustments": lambda: admin.get(f"/v1/accounts/{account}/adjustments"),
        "POST /v1/accounts/{id}/read-tokens": lambda: admin.post(f"/v1/accounts/{account}/read-tokens"),
        "GET /v1/accounts/{id}/read-tokens": lambda: admin.get(f"/v1/accounts/{account}/read-tokens"),
        "GET /v1/regions": lambda: admin.get("/v1/regions"),
        "PUT / DELETE /v1/regions/{region}/nodes/{node_id}": lambda: admin.put("/v1/regions/shapes/nodes/shapes-node"),
    }
    out = {}
    for name, call in calls.items():
        resp = call()
        assert resp.status_code < 300, (name, resp.text)
        out[name] = resp.json()
    return out


def test_every_table_shape_matches_the_served_response(served: dict[str, Any]) -> None:
    shapes = table_shapes()
    assert len(shapes) >= 10, shapes
    unchecked = set(shapes) - set(served)
    assert not unchecked, f"README rows with a shape this test does not call: {sorted(unchecked)}"
    problems = [p for row, shape in shapes.items() for p in compare(shape, served[row], row)]
    assert not problems, "\n".join(problems)


def test_billing_and_event_paragraph_shapes_match(served: dict[str, Any]) -> None:
    bill = served["GET /v1/accounts/{id}/billing"]
    problems = compare(paragraph_shape("**Billing.**"), bill, "billing")
    figure = paragraph_shape("each bandwidth\nfigure being")
    for name, value in bill["bandwidth_bps"].items():
        problems += compare(figure, value, f"billing.bandwidth_bps.{name}")
    event_shape = paragraph_shape("`GET /v1/accounts/{id}/events?limit=`")
    events = served["GET /v1/accounts/{id}/events"]
    assert set(events) == {"account_id", "events"} and events["events"]
    for event in events["events"]:
        problems += compare(re.sub(r'"[^"]*"', "", event_shape), event, "event")
    assert not problems, "\n".join(problems)
