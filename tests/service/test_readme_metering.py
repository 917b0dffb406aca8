"""The README's metering example block, run as printed against a real `meterd up`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

from service.webhooks import sign, signature_header
from tests.support.meterd import running_meterd
from tests.support.require import require_binary

README = Path(__file__).resolve().parents[2] / "README.md"


def metering_script() -> str:
    section = README.read_text().split("## Metering", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the metering section has one bash block"
    return blocks[0]


def test_readme_metering_block_works_as_printed(tmp_path: Path) -> None:
    require_binary("jq")
    require_binary("curl")
    with running_meterd(tmp_path, "up") as m:
        # The block uses the quick start's TOKEN and API; nothing else is substituted.
        script = f"TOKEN={m.admin_token}\nAPI={m.http}\n" + metering_script()
        venv_python = str(Path(shutil.which("python") or "python"))
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=README.parent, capture_output=True,
                             text=True, timeout=60, env={"PATH": f"{Path(venv_python).parent}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr + out.stdout
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    assert json.loads(lines[0]) == {"batch_id": "globex-0001", "accepted": 2, "duplicate": False}
    by_node = json.loads(lines[1])
    assert by_node["timezone"] == "Asia/Shanghai"
    assert [(s["node_id"], s["totals"]["bytes_in"]) for s in by_node["series"]] == [("sha-01", 300000),
                                                                                    ("sha-02", 1200)]
    assert all(p["ts"].endswith("+08:00") for s in by_node["series"] for p in s["points"])
    one_node = json.loads(lines[2])
    assert one_node["node_id"] == ["sha-01"] and one_node["totals"] == {"bytes_in": 300000, "bytes_out": 9000,
                                                                        "requests": 40}
    assert lines[3] == "ts,bytes_in,bytes_out,requests"
    assert lines[4].endswith("+08:00,301200,84000,43")
    bill = json.loads(lines[5])
    assert (bill["timezone"], bill["bytes_in"], bill["over_quota"], bill["complete"]) == (
        "Asia/Shanghai", 301200, False, False)
    assert set(bill["bandwidth_bps"]) == {"p95", "peak", "daily_peak_avg"}
    problem = json.loads(lines[6])
    assert problem["status"] == 400 and problem["errors"][0]["field"] == "tz"
    (event,) = json.loads(lines[7])["events"]
    assert (event["threshold"], event["used_bytes"], event["quota_bytes"]) == (0.25, 385200, 1000000)
    hook = json.loads(lines[8])
    assert hook["webhook_url"] == "https://hooks.example.com/meterd" and hook["webhook_secret"].startswith("whsec_")


def test_readme_signature_check_accepts_meterds_signature() -> None:
    """The README's receiver snippet, executed, against what meterd's dispatcher signs."""
    section = README.read_text().split("## Metering", 1)[1].split("\n## ", 1)[0]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, re.S)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102
    body, ts = b'{"id":"evt_1"}', int(time.time())
    headers = {"Meterd-Timestamp": str(ts), "Meterd-Signature": sign("whsec_k", ts, body)}
    assert scope["verify"]("whsec_k", headers, body)
    assert not scope["verify"]("whsec_other", headers, body)
    assert not scope["verify"]("whsec_k", headers, body + b" ")
    old = {"Meterd-Timestamp": str(ts - 900), "Meterd-Signature": sign("whsec_k", ts - 900, body)}
    assert not scope["verify"]("whsec_k", old, body)
    # During a rotation's overlap the header carries both signatures: either secret verifies.
    both = {"Meterd-Timestamp": str(ts), "Meterd-Signature": signature_header(["whsec_new", "whsec_k"], ts, body)}
    assert scope["verify"]("whsec_k", both, body) and scope["verify"]("whsec_new", both, body)
    assert not scope["verify"]("whsec_other", both, body)
