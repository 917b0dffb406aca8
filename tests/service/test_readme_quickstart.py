"""The README's quick-start block, run as printed against a real `meterd up`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from tests.support.meterd import meterd_env, running_meterd
from tests.support.require import require_binary

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart_script() -> str:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert blocks, "README quick start has no bash block"
    return blocks[0]


def test_readme_quickstart_works_as_printed(tmp_path: Path) -> None:
    require_binary("jq")
    require_binary("curl")
    script = quickstart_script()
    assert "TOKEN=<the printed admin token>" in script
    env = meterd_env(tmp_path)
    env.pop("METERD_WORKERS")  # as a user runs it: the default, writer processes on every core
    with running_meterd(tmp_path, "up", env=env) as m:
        grpc_port = m.grpc.rsplit(":", 1)[1]
        # Same commands; only the token and the test's random ports differ from the printed text.
        script = (script.replace("<the printed admin token>", m.admin_token)
                  .replace("http://127.0.0.1:8080", m.http)
                  .replace("127.0.0.1:50051", f"127.0.0.1:{grpc_port}"))
        venv_python = str(Path(shutil.which("python") or "python"))
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=README.parent, capture_output=True,
                             text=True, timeout=60, env={"PATH": f"{Path(venv_python).parent}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr + out.stdout
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    http_write = json.loads(lines[0])
    assert http_write == {"batch_id": "edge-1-0001", "accepted": 1, "duplicate": False}
    assert 'batch_id: "edge-1-0002"' in out.stdout and "accepted: 1" in out.stdout
    usage = json.loads(next(ln for ln in lines if ln.startswith('{"account_id"') and '"points"' in ln))
    assert usage["totals"] == {"bytes_in": 2000, "bytes_out": 96000, "requests": 5}
    balance = json.loads(lines[-1])
    assert balance["used_bytes"] == 2000 + 96000
    assert balance["remaining_bytes"] == 10_000_000_000 - 98000 and balance["over_quota"] is False
