"""Acceptance: no name starting with `_` from a third-party package is used in governance/,
profiling/ or service/ (generated protobuf code aside). Allow-list: none."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.code.private_names import python_files, scan_sources

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("governance", "profiling", "service")
GENERATED = ("service/pb",)


def test_our_code_uses_no_third_party_private_names() -> None:
    files = list(python_files(ROOT, SCANNED, GENERATED))
    assert len(files) > 50  # the scan did look at the code
    findings = scan_sources({str(p.relative_to(ROOT)): p.read_text() for p in files})
    assert not findings, "third-party private names:\n" + "\n".join(map(str, findings))


@pytest.mark.parametrize("snippet", [
    "from uvicorn.protocols.http.httptools_impl import STATUS_LINE, _private_helper\n",
    "import opentelemetry.context._private\n",
    "from opentelemetry.sdk.trace._internal import x\n",
    "from opentelemetry import context\nvar = context._RUNTIME_CONTEXT\n",
    "import opentelemetry.context as c\nvar = getattr(c, '_RUNTIME_CONTEXT', None)\n",
    "def f(tracer):\n    return tracer._instrumentation_scope\n",
    "def f(sampler):\n    return sampler._root.bound\n",
    "def f(sampler):\n    return getattr(sampler, '_root', None)\n",
    "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol\n"
    "class P(HttpToolsProtocol):\n    def _start_asgi_task(self, cycle, app):\n        pass\n",
    "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol\nbase = HttpToolsProtocol\n"
    "def go(p):\n    base._start_asgi_task(p, None, None)\n",
    "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol\n"
    "class P(HttpToolsProtocol):\n    def go(self):\n        self._start_asgi_task(None, None)\n",
])
def test_the_scan_fails_on_each_kind_of_use(snippet: str) -> None:
    assert scan_sources({"snippet.py": snippet}), snippet


@pytest.mark.parametrize("snippet", [
    "from governance._prom import metric\n",  # our own private module
    "import sys\nenabled = getattr(sys, '_is_gil_enabled', None)\n",  # the standard library
    "class A:\n    def __init__(self):\n        self._x = 1\n\ndef f(a: A):\n    return a._x\n",  # our own name
    "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol\n"
    "class P(HttpToolsProtocol):\n    def go(self):\n        self._mine = 1\n        return self.__class__\n",
])
def test_the_scan_allows_our_own_names_dunders_and_the_standard_library(snippet: str) -> None:
    assert scan_sources({"snippet.py": snippet}) == []
