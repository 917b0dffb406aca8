"""tests/support/ci_no_skips.py in a real pytest run: skips fail under CI=true, pass as skips otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = '''
import pytest

def test_skips():
    pytest.skip("no frobnicator")

@pytest.mark.skipif(True, reason="never here")
def test_skipif():
    pass

def test_importorskip():
    pytest.importorskip("no_such_module_xyz")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_xfail():
    assert False

def test_passes():
    pass
'''


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.support.ci_no_skips", "-q", "-rfs",
                           "-p", "no:cacheprovider", str(tmp_path / "test_sample.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_skips_fail_under_ci(tmp_path: Path) -> None:
    result = _run(tmp_path, "true")
    assert result.returncode == 1, result.stdout
    # A skip in the call phase fails the test; one in setup (skipif, a fixture) is an error.
    assert "2 failed, 1 passed, 1 xfailed, 1 error" in result.stdout, result.stdout
    assert "skipped" not in result.stdout.splitlines()[-1]
    assert "skipped under CI=true (CI must run every test): no frobnicator" in result.stdout


def test_skips_stay_skips_locally(tmp_path: Path) -> None:
    result = _run(tmp_path, None)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 3 skipped, 1 xfailed" in result.stdout, result.stdout
