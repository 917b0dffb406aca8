"""The real `meterd` command line: config errors exit 2 with the bad key named, admin helpers, shutdown."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from service.config import ConfigError, load_settings
from service.storage.db import MIGRATIONS
from tests.support.meterd import MeterdBin, MeterdProc, meterd_env


def run(tmp: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs meterd to completion; one that is still running after `timeout` gets SIGTERM (so it also
    stops its embedded broker) and the test fails."""
    base = meterd_env(tmp)
    base.pop("METERD_ADMIN_TOKEN")
    base.update(env)
    with subprocess.Popen([MeterdBin, *args], cwd=tmp, env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, stdin=subprocess.DEVNULL) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"meterd {' '.join(args)} still running after {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_config_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


# -- invalid configuration -----------------------------------------------------------------------

def test_unknown_yaml_key(tmp_path: Path) -> None:
    cfg = tmp_path / "meterd.yaml"
    cfg.write_text("http:\n  prot: 8080\n")
    result = run(tmp_path, "migrate", "--config", str(cfg))
    assert_config_error(result, "http.prot", "unknown setting")


def test_bad_yaml_value(tmp_path: Path) -> None:
    cfg = tmp_path / "meterd.yaml"
    cfg.write_text("ingest:\n  max_batch_records: 0\n")
    assert_config_error(run(tmp_path, "migrate", "-c", str(cfg)), "ingest.max_batch_records",
                        "METERD_INGEST__MAX_BATCH_RECORDS")


def test_yaml_syntax_error(tmp_path: Path) -> None:
    cfg = tmp_path / "meterd.yaml"
    cfg.write_text("http: [unclosed\n")
    assert_config_error(run(tmp_path, "migrate", "--config", str(cfg)), "not valid YAML", str(cfg))


def test_bad_env_value(tmp_path: Path) -> None:
    result = run(tmp_path, "migrate", METERD_HTTP__PORT="notaport")
    assert_config_error(result, "http.port", "METERD_HTTP__PORT")


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert_config_error(run(tmp_path, "up", "--config", str(missing)), "config file not found", str(missing))


def test_production_role_needs_admin_token(tmp_path: Path) -> None:
    # Bootstrap servers are set (so the role is allowed) but nothing is listening: the token check
    # must come first and no connection is attempted.
    result = run(tmp_path, "api", METERD_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1", timeout=30)
    assert_config_error(result, "production mode needs an admin token", "METERD_ADMIN_TOKEN")
    short = run(tmp_path, "writer", METERD_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1", METERD_ADMIN_TOKEN="short")
    assert_config_error(short, "at least 16 characters", "METERD_ADMIN_TOKEN")
    assert "short" not in short.stdout


def test_out_of_range_port_flag_is_rejected(tmp_path: Path) -> None:
    """A flag value gets the same validation as YAML/env (port 70000 must not wrap to 4464)."""
    result = run(tmp_path, "up", "--http-port", "70000", "--grpc-port", "0", timeout=10)
    assert_config_error(result, "http.port")


# -- precedence ----------------------------------------------------------------------------------

def test_precedence_flags_over_env_over_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("METERD_")]:
        monkeypatch.delenv(name)
    cfg = tmp_path / "meterd.yaml"
    cfg.write_text("http:\n  host: 0.0.0.0\n  port: 1000\ngrpc:\n  port: 1001\n"
                   "ingest:\n  max_batch_records: 7\nservice_name: fromyaml\n")
    s = load_settings(cfg)
    assert (s.http.host, s.http.port, s.grpc.port, s.ingest.max_batch_records) == ("0.0.0.0", 1000, 1001, 7)
    assert s.http.max_body_bytes == 4 * 1024 * 1024  # untouched default

    monkeypatch.setenv("METERD_HTTP__PORT", "2000")
    monkeypatch.setenv("METERD_SERVICE_NAME", "fromenv")
    s = load_settings(cfg)
    # env wins for the keys it sets; sibling keys from the same YAML section survive.
    assert (s.http.host, s.http.port, s.grpc.port, s.service_name) == ("0.0.0.0", 2000, 1001, "fromenv")

    s = load_settings(cfg, {"http": {"port": 3000}, "grpc": {"port": None}, "data_dir": tmp_path / "d"})
    assert (s.http.host, s.http.port, s.grpc.port, s.data_dir) == ("0.0.0.0", 3000, 1001, tmp_path / "d")
    assert s.database_url() == f"sqlite+aiosqlite:///{(tmp_path / 'd' / 'meterd.db').resolve()}"

    monkeypatch.setenv("METERD_DATABASE__URL", "postgresql+asyncpg://u:p@h/db")
    assert load_settings(None).database_url() == "postgresql+asyncpg://u:p@h/db"
    assert "u:p" not in repr(load_settings(None))  # the URL is a secret


def test_load_settings_errors_name_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka:\n  partitions: -1\nlog:\n  level: LOUD\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert "kafka.partitions" in str(info.value) and "log.level" in str(info.value)
    cfg.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(cfg)


def test_overrides_are_validated() -> None:
    with pytest.raises(ConfigError, match="http.port"):
        load_settings(None, {"http": {"port": 70000}})


# -- admin helpers -------------------------------------------------------------------------------

def test_migrate_and_admin_commands_without_a_server(tmp_path: Path) -> None:
    first = run(tmp_path, "migrate")
    assert first.returncode == 0, first.stderr
    assert f"applied migrations: {[v for v, _, _ in MIGRATIONS]}" in first.stdout
    second = run(tmp_path, "migrate")
    assert second.returncode == 0 and "database is up to date" in second.stdout, second.stdout

    # The admin commands talk to a running server's API (tests/service/test_admin_cli.py), never to a
    # database of their own: without a server they say so and change nothing.
    with sqlite3.connect(tmp_path / "data" / "meterd.db") as conn:
        before = conn.execute("SELECT count(*) FROM accounts").fetchone()
    created = run(tmp_path, "accounts", "create", "--name", "x", "--url", "http://127.0.0.1:9",
                  METERD_ADMIN_TOKEN="an-admin-token-0123456789")
    assert created.returncode == 2 and "cannot reach meterd at http://127.0.0.1:9" in created.stderr, created
    with sqlite3.connect(tmp_path / "data" / "meterd.db") as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == before


# -- graceful shutdown ---------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_up_stops_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    proc = MeterdProc(["up"], meterd_env(tmp_path), tmp_path).start()
    try:
        assert proc.http is not None
        assert httpx.get(f"{proc.http}/healthz", timeout=5).status_code == 200
        proc.signal(sig)
        assert proc.proc is not None
        assert proc.proc.wait(30) == 0, proc.output()
        out = proc.output()
        assert "draining" in out and "stopped" in out, out
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{proc.http}/healthz", timeout=2)
    finally:
        proc.kill()


@pytest.mark.parametrize(("env", "key"), [("METERD_CONSUMER__POISON_ATTEMPTS", "consumer.poison_attempts"),
                                          ("METERD_CONSUMER__READ_MAX_BYTES", "consumer.read_max_bytes"),
                                          ("METERD_CONSUMER__MAX_FLUSH_KEYS", "consumer.max_flush_keys")])
def test_consumer_bounds_must_be_positive(tmp_path: Path, env: str, key: str) -> None:
    assert_config_error(run(tmp_path, "migrate", **{env: "0"}), key, env)
