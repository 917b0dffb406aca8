"""Render folded stacks (py-spy's raw format) into a self-contained, interactive SVG flamegraph.

Why our own renderer: py-spy writes either folded stacks or an SVG per run, not both, and we want
both from the same samples with one attach. No maintained Python package renders folded stacks
(flamegraph.pl is a Perl script that Debian does not package), so this small module lays out the
frames itself. The SVG is static markup (every frame is a <g> with a <title>, so it reads without
JavaScript) plus a short script for click-to-zoom, search and a details line when opened directly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

WIDTH = 1200
PAD = 10
FRAME_H = 17
HEADER_H = 58
FOOTER_H = 24
FONT_PX = 12
CHAR_PX = FONT_PX * 0.6  # monospace advance, used to cut labels to fit
MIN_WIDTH_PX = 0.1


@dataclass
class Node:
    name: str
    samples: int = 0
    children: dict[str, Node] = field(default_factory=dict)


def parse_folded(text: str) -> dict[tuple[str, ...], int]:
    """`frame;frame;frame count` lines -> {stack: samples}; malformed lines are skipped."""
    stacks: dict[tuple[str, ...], int] = {}
    for line in text.splitlines():
        line = line.rstrip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")  # frame names can contain spaces, the count cannot
        if not stack or not count.isdigit():
            continue
        key = tuple(stack.split(";"))
        stacks[key] = stacks.get(key, 0) + int(count)
    return stacks


def build_tree(stacks: dict[tuple[str, ...], int]) -> Node:
    root = Node("all")
    for stack, count in stacks.items():
        root.samples += count
        node = root
        for frame in stack:
            node = node.children.setdefault(frame, Node(frame))
            node.samples += count
    return root


def _color(name: str) -> str:
    # Deterministic colours so two captures of the same code look alike. Library and runtime
    # frames are cool, the application's own frames warm, so "our code" stands out.
    h = zlib.crc32(name.encode())
    v1, v2, v3 = (h & 0xFF) / 255, ((h >> 8) & 0xFF) / 255, ((h >> 16) & 0xFF) / 255
    if name.startswith("process ") or name == "all":
        grey = 190 + int(30 * v1)
        return f"rgb({grey},{grey},{grey})"
    lowered = name.lower()
    if "site-packages" in lowered or "/lib/python" in lowered or "<frozen" in lowered:
        return f"rgb({70 + int(40 * v1)},{150 + int(50 * v2)},{200 + int(40 * v3)})"
    return f"rgb({205 + int(50 * v3)},{int(200 * v1)},{int(55 * v2)})"


def _label(name: str, width_px: float) -> str:
    chars = int((width_px - 6) / CHAR_PX)
    if chars < 3:
        return ""
    return name if len(name) <= chars else name[: chars - 2] + ".."


def render_svg(folded: str, title: str = "Flame graph", subtitle: str = "") -> str:
    """An interactive SVG document for the folded stacks (root at the top, callees below)."""
    root = build_tree(parse_folded(folded))
    total = root.samples
    usable = WIDTH - 2 * PAD
    frames: list[str] = []
    depth_max = 0

    def walk(node: Node, left: int, depth: int) -> None:
        nonlocal depth_max
        width = node.samples / total * usable
        if width < MIN_WIDTH_PX:
            return
        depth_max = max(depth_max, depth)
        x = PAD + left / total * usable
        y = HEADER_H + depth * FRAME_H
        pct = 100.0 * node.samples / total
        frames.append(
            f'<g class="frame" data-l="{left}" data-n="{node.samples}" data-d="{depth}" '
            f"data-name={quoteattr(node.name)}>"
            f"<title>{escape(node.name)} ({node.samples} samples, {pct:.2f}%)</title>"
            f'<rect x="{x:.2f}" y="{y}" width="{width:.2f}" height="{FRAME_H - 1}" rx="2" '
            f'fill="{_color(node.name)}"/>'
            f'<text x="{x + 3:.2f}" y="{y + FRAME_H - 5}">{escape(_label(node.name, width))}</text></g>'
        )
        offset = left
        for name in sorted(node.children):
            child = node.children[name]
            walk(child, offset, depth + 1)
            offset += child.samples

    if total:
        walk(root, 0, 0)
    height = HEADER_H + (depth_max + 1) * FRAME_H + FOOTER_H
    if not total:
        height = HEADER_H + 60
        frames.append(
            f'<text x="{WIDTH / 2}" y="{HEADER_H + 30}" text-anchor="middle" class="empty">'
            "No samples were collected (the process was idle, or the capture was too short).</text>"
        )
    head = (
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" class="title">{escape(title)}</text>'
        f'<text x="{WIDTH / 2}" y="40" text-anchor="middle" class="sub">'
        f"{escape(subtitle)} {total} samples. Click a frame to zoom, Ctrl+F or / to search.</text>"
        f'<text id="reset" x="{PAD}" y="22" class="button" visibility="hidden">Reset zoom</text>'
        f'<text id="search" x="{WIDTH - PAD}" y="22" text-anchor="end" class="button">Search</text>'
        f'<text id="matched" x="{WIDTH - PAD}" y="{height - 8}" text-anchor="end"></text>'
        f'<text id="details" x="{PAD}" y="{height - 8}"> </text>'
    )
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        f'<svg version="1.1" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" data-total="{total}" data-width="{usable}" data-pad="{PAD}" '
        f'data-char="{CHAR_PX}" data-frame-h="{FRAME_H}" data-header-h="{HEADER_H}">'
        f"<title>{escape(title)}</title>"
        f"<style>{_STYLE}</style>"
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#fbfaf5"/>'
        f"{head}{''.join(frames)}"
        f"<script><![CDATA[{_SCRIPT}]]></script></svg>\n"
    )


def sample_count(folded: str) -> int:
    return sum(parse_folded(folded).values())


_STYLE = (
    f"text{{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:{FONT_PX}px;fill:#000}}"
    ".title{font-size:17px;font-weight:bold}.sub{fill:#555}.empty{font-size:15px;fill:#555}"
    ".button{cursor:pointer;fill:#1a56c4;text-decoration:underline}"
    "g.frame{cursor:pointer}g.frame:hover rect{stroke:#000;stroke-width:0.6}"
    "g.frame text{pointer-events:none}g.parent rect{opacity:0.55}"
)

# Plain ES5-style script so it runs in any browser that opens the SVG file directly.
_SCRIPT = r"""
(function () {
  var svg = document.documentElement;
  var total = +svg.getAttribute('data-total'), W = +svg.getAttribute('data-width');
  var PAD = +svg.getAttribute('data-pad'), CH = +svg.getAttribute('data-char');
  var frames = Array.prototype.slice.call(document.querySelectorAll('g.frame'));
  var details = document.getElementById('details'), matched = document.getElementById('matched');
  var reset = document.getElementById('reset');
  function num(g, a) { return +g.getAttribute(a); }
  function label(name, w) {
    var c = Math.floor((w - 6) / CH);
    if (c < 3) return '';
    return name.length <= c ? name : name.slice(0, c - 2) + '..';
  }
  function place(g, x, w) {
    var r = g.querySelector('rect'), t = g.querySelector('text');
    r.setAttribute('x', x.toFixed(2)); r.setAttribute('width', w.toFixed(2));
    t.setAttribute('x', (x + 3).toFixed(2)); t.textContent = label(g.getAttribute('data-name'), w);
  }
  function zoom(target) {
    var l0 = num(target, 'data-l'), n0 = num(target, 'data-n'), d0 = num(target, 'data-d');
    frames.forEach(function (g) {
      var l = num(g, 'data-l'), n = num(g, 'data-n'), d = num(g, 'data-d');
      g.classList.remove('parent');
      if (d < d0 && l <= l0 && l + n >= l0 + n0) {
        g.classList.add('parent'); g.style.display = ''; place(g, PAD, W);
      } else if (d >= d0 && l >= l0 && l + n <= l0 + n0 && n / n0 * W >= 0.1) {
        g.style.display = ''; place(g, PAD + (l - l0) / n0 * W, n / n0 * W);
      } else {
        g.style.display = 'none';
      }
    });
    reset.setAttribute('visibility', n0 === total ? 'hidden' : 'visible');
  }
  function unzoom() { if (frames.length) zoom(frames[0]); }
  function search() {
    var term = window.prompt('Search frames (regular expression)', '');
    if (term === null) return;
    var re; try { re = new RegExp(term); } catch (e) { window.alert(e); return; }
    var spans = [];
    frames.forEach(function (g) {
      var r = g.querySelector('rect');
      if (!r.hasAttribute('data-fill')) r.setAttribute('data-fill', r.getAttribute('fill'));
      var hit = term !== '' && re.test(g.getAttribute('data-name'));
      r.setAttribute('fill', hit ? 'rgb(230,0,230)' : r.getAttribute('data-fill'));
      if (hit) spans.push([num(g, 'data-l'), num(g, 'data-l') + num(g, 'data-n')]);
    });
    spans.sort(function (a, b) { return a[0] - b[0]; });
    var covered = 0, end = -1;
    spans.forEach(function (s) {
      if (s[0] >= end) { covered += s[1] - s[0]; end = s[1]; }
      else if (s[1] > end) { covered += s[1] - end; end = s[1]; }
    });
    matched.textContent = term === '' ? '' : 'Matched: ' + (100 * covered / (total || 1)).toFixed(1) + '%';
  }
  frames.forEach(function (g) {
    g.addEventListener('click', function () { zoom(g); });
    g.addEventListener('mouseover', function () { details.textContent = g.querySelector('title').textContent; });
    g.addEventListener('mouseout', function () { details.textContent = ' '; });
  });
  reset.addEventListener('click', unzoom);
  document.getElementById('search').addEventListener('click', search);
  window.addEventListener('keydown', function (e) {
    if ((e.ctrlKey && e.key === 'f') || e.key === '/') { e.preventDefault(); search(); }
    if (e.key === 'Escape') unzoom();
  });
})();
"""
