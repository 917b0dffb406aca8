"""An operator's first runs of `meterd up`: the development token survives restarts, one data dir
whatever the working directory, one clear line and exit 2 for start-up failures, a pid file."""

from __future__ import annotations

import socket
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.meterd import MeterdBin, MeterdProc, free_port, meterd_env


def dev_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Development mode as a new user has it: no admin token and no data dir in the environment."""
    env = meterd_env(tmp, **extra)
    for name in ("METERD_ADMIN_TOKEN", "METERD_DATA_DIR"):
        if name not in extra:
            env.pop(name)
    env.setdefault("XDG_DATA_HOME", str(tmp / "xdg"))
    return env


def start_in(cwd: Path, env: dict[str, str]) -> MeterdProc:
    cwd.mkdir(parents=True, exist_ok=True)
    return MeterdProc(["up"], env, cwd).start()


def run_cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([MeterdBin, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_dev_token_survives_a_restart_and_lives_in_the_data_dir(tmp_path: Path) -> None:
    env = dev_env(tmp_path)
    data = tmp_path / "xdg" / "meterd"
    first = start_in(tmp_path / "a", env)
    try:
        token = first.admin_token
        assert f"kept in {data / 'admin-token'}" in first.output(), first.output()
        with first.client() as c:
            account = c.post("/v1/accounts", json={"name": "kept"}).json()["id"]
    finally:
        assert first.stop() == 0
    path = data / "admin-token"
    assert path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = start_in(tmp_path / "b", env)  # another working directory, the same data dir
    try:
        assert second.admin_token == token, second.output()
        with second.client() as c:
            assert c.get(f"/v1/accounts/{account}").status_code == 200
    finally:
        second.stop()


def test_production_token_still_comes_from_the_environment(tmp_path: Path) -> None:
    env = dev_env(tmp_path, METERD_ADMIN_TOKEN="from-the-environment-0123")
    proc = start_in(tmp_path / "a", env)
    try:
        assert "from-the-environment-0123" not in proc.output()
        assert not (tmp_path / "xdg" / "meterd" / "admin-token").exists()
    finally:
        proc.stop()


def test_data_dir_default_is_xdg_and_printed_flag_and_env_override(tmp_path: Path) -> None:
    env = dev_env(tmp_path)
    proc = start_in(tmp_path / "cwd", env)
    try:
        assert f"Data dir     {tmp_path / 'xdg' / 'meterd'}" in proc.output(), proc.output()
    finally:
        proc.stop()
    assert (tmp_path / "xdg" / "meterd" / "meterd.db").exists()
    assert not (tmp_path / "cwd" / "meterd-data").exists()
    # Without XDG_DATA_HOME: ~/.local/share/meterd
    home_env = {k: v for k, v in env.items() if k != "XDG_DATA_HOME"} | {"HOME": str(tmp_path / "home")}
    migrated = run_cli(tmp_path / "cwd", home_env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert (tmp_path / "home" / ".local" / "share" / "meterd" / "meterd.db").exists()
    by_env = run_cli(tmp_path / "cwd", env | {"METERD_DATA_DIR": str(tmp_path / "e")}, "migrate")
    assert by_env.returncode == 0 and (tmp_path / "e" / "meterd.db").exists(), by_env.stderr
    by_flag = run_cli(tmp_path / "cwd", env, "migrate", "--data-dir", str(tmp_path / "f"))
    assert by_flag.returncode == 0 and (tmp_path / "f" / "meterd.db").exists(), by_flag.stderr


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "admin token" not in result.stdout, result.stdout  # nothing printed before the servers are bound


def test_busy_port_is_one_line_naming_port_and_flag_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(tmp_path, dev_env(tmp_path, METERD_HTTP__PORT=str(port)), "up")
        assert_one_line_exit_2(result, f"127.0.0.1:{port}", "--http-port", "METERD_HTTP__PORT")
        grpc = run_cli(tmp_path, dev_env(tmp_path, METERD_GRPC__PORT=str(port)), "up")
        assert_one_line_exit_2(grpc, f"127.0.0.1:{port}", "--grpc-port", "METERD_GRPC__PORT")
        both = run_cli(tmp_path, dev_env(tmp_path, METERD_GRPC__PORT=str(port), METERD_HTTP__PORT=str(port)), "up")
        assert_one_line_exit_2(both, "--grpc-port", "--http-port")  # both named at once


def test_data_dir_that_cannot_be_created_is_one_line_exit_2(tmp_path: Path) -> None:
    # /proc refuses new directories even to root (CI runs as root, so permission bits prove nothing).
    result = run_cli(tmp_path, dev_env(tmp_path, METERD_DATA_DIR="/proc/meterd-data"), "up")
    assert_one_line_exit_2(result, "/proc/meterd-data", "METERD_DATA_DIR")


def test_data_dir_that_is_a_file_is_one_line_exit_2(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    result = run_cli(tmp_path, dev_env(tmp_path, METERD_DATA_DIR=str(a_file)), "up")
    assert_one_line_exit_2(result, str(a_file), "--data-dir", "METERD_DATA_DIR")


@pytest.mark.parametrize("url, needle", [
    ("nonsense", "not a database URL"),
    ("mysql+nodriver://u@h/db", "not a database URL"),
    (f"postgresql+asyncpg://meterd:secret@127.0.0.1:{free_port()}/meterd", "cannot connect"),
])
def test_bad_database_url_is_one_line_exit_2(tmp_path: Path, url: str, needle: str) -> None:
    result = run_cli(tmp_path, dev_env(tmp_path, METERD_DATABASE__URL=url), "up")
    assert_one_line_exit_2(result, needle, "METERD_DATABASE__URL")
    assert "secret" not in result.stderr


def test_pid_in_the_start_up_lines_and_a_pid_file(tmp_path: Path) -> None:
    env = dev_env(tmp_path, METERD_DATA_DIR=str(tmp_path / "data"))
    proc = start_in(tmp_path, env)
    pid_file = tmp_path / "data" / "meterd-up.pid"
    try:
        assert pid_file.read_text().strip() == str(proc.pid)
        assert f"send SIGTRAP to pid {proc.pid}" in proc.output(), proc.output()
        assert str(pid_file) in proc.output()
        assert proc.http is not None
        assert httpx.get(f"{proc.http}/healthz").status_code == 200
    finally:
        assert proc.stop() == 0
    assert not pid_file.exists()  # removed by the drain
