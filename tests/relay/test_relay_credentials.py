"""Issue 23 / audit N21: the relay throttles failed credentials per peer (like meterd's API), warns
at start when it listens on a non-loopback address without authentication, and refuses a bearer
token shorter than 16 characters with a clear configuration error and a non-zero exit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from service.relay import RelaySettings
from service.relay.app import build_relay_app
from tests.relay.fake_dingtalk import FakeDingTalk
from tests.relay.helpers import SECRET, alert, meterd_cli, notification, relay_process, relay_settings

TOKEN = "relay-webhook-token-0123456789"


def client_from(app: object, host: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(host, 4711)),  # type: ignore[arg-type]
                             base_url="http://relay")


async def test_failed_credentials_are_throttled_per_peer(fake_robot: FakeDingTalk) -> None:
    settings = relay_settings(fake_robot, auth={"bearer_token": TOKEN, "failed_limit": "5/minute"})
    app = build_relay_app(settings, registry=CollectorRegistry(),
                          transport=httpx.ASGITransport(app=fake_robot.app))
    payload = notification(alert("Guess"))
    async with app.router.lifespan_context(app), client_from(app, "10.0.0.1") as guesser, \
            client_from(app, "10.0.0.2") as alertmanager:
        statuses = []
        for i in range(30):
            r = await guesser.post("/alerts/oncall", json=payload, headers={"Authorization": f"Bearer guess-{i:020}"})
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.headers["content-type"].startswith("application/problem+json") and r.headers["retry-after"]
        assert statuses == [401] * 5 + [429] * 25, statuses
        # The guesser's address stays refused, even with the right token (that is what stops guessing) ...
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert (await guesser.post("/alerts/oncall", json=payload, headers=right)).status_code == 429
        # ... while another address is not affected.
        assert (await alertmanager.post("/alerts/oncall", json=payload, headers=right)).status_code in (200, 202)


@pytest.mark.parametrize(("auth", "warned"), [({}, True), ({"bearer_token": TOKEN}, False)])
async def test_warns_when_exposed_without_auth(tmp_path: Path, auth: dict[str, str], warned: bool) -> None:
    fake = FakeDingTalk(secret=SECRET)
    robots = {"oncall": {"webhook_url": fake.webhook_url, "secret": SECRET}}
    config = {"host": "0.0.0.0", "auth": auth, "robots": robots}
    async with relay_process(tmp_path, config) as relay:
        log = relay.log()
    assert ("without authentication" in log) is warned, log


async def test_no_warning_on_loopback_without_auth(tmp_path: Path) -> None:
    fake = FakeDingTalk(secret=SECRET)
    config = {"robots": {"oncall": {"webhook_url": fake.webhook_url, "secret": SECRET}}}
    async with relay_process(tmp_path, config) as relay:
        assert "without authentication" not in relay.log()


def test_short_bearer_token_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        RelaySettings.model_validate({"auth": {"bearer_token": "short-token"}})
    assert RelaySettings.model_validate({"auth": {"bearer_token": "x" * 16}}).auth.bearer_token is not None


def test_short_token_file_exits_non_zero_with_a_clear_message(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tiny-secret-9\n")
    config = tmp_path / "meterd.yaml"
    config.write_text(yaml.safe_dump({"relay": {"auth": {"bearer_token_file": str(token_file)}}}))
    done = subprocess.run([*meterd_cli(), "relay", "--config", str(config)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0
    assert "at least 16 characters" in done.stderr + done.stdout and "tiny-secret-9" not in done.stderr + done.stdout
