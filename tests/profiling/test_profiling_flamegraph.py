"""The folded-stack parser and the SVG flamegraph renderer."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from profiling.flamegraph import build_tree, parse_folded, render_svg

SVG = "{http://www.w3.org/2000/svg}"

FOLDED = """\
process 1:"python app.py";main (app.py:10);handle <request> (app.py:20);parse (app.py:30) 30
process 1:"python app.py";main (app.py:10);handle <request> (app.py:20) 10
process 1:"python app.py";main (app.py:10);idle & wait (site-packages/x.py:1) 60
garbage line without count
;lonely 3
"""


def test_parse_folded_sums_and_keeps_spaces_in_names():
    stacks = parse_folded(FOLDED + FOLDED)
    key = ('process 1:"python app.py"', "main (app.py:10)", "handle <request> (app.py:20)", "parse (app.py:30)")
    assert stacks[key] == 60
    assert sum(stacks.values()) == 2 * 103


def test_tree_totals():
    root = build_tree(parse_folded(FOLDED))
    assert root.samples == 103
    main = root.children['process 1:"python app.py"'].children["main (app.py:10)"]
    assert main.samples == 100
    assert main.children["handle <request> (app.py:20)"].samples == 40


def test_svg_is_well_formed_with_proportional_widths_and_escaped_names():
    svg = render_svg(FOLDED, title="t <1>", subtitle="s")
    doc = ET.fromstring(svg)  # raises if escaping is broken
    frames = {}
    for g in doc.iter(f"{SVG}g"):
        frames[g.get("data-name")] = (float(g.find(f"{SVG}rect").get("width")), g.find(f"{SVG}title").text)
    assert frames["all"][0] > 0
    main_w = frames["main (app.py:10)"][0]
    handle_w = frames["handle <request> (app.py:20)"][0]
    assert abs(handle_w / main_w - 0.4) < 0.01
    assert frames["handle <request> (app.py:20)"][1] == "handle <request> (app.py:20) (40 samples, 38.83%)"
    assert doc.find(f"{SVG}script") is not None  # interactive: zoom and search


def test_empty_input_says_so():
    svg = render_svg("", title="nothing")
    doc = ET.fromstring(svg)
    texts = " ".join(t.text or "" for t in doc.iter(f"{SVG}text"))
    assert "No samples" in texts
