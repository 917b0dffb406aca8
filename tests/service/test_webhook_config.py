"""Bad webhook settings stop `meterd` with exit code 2 and the key named (the real command line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.test_config_cli import assert_config_error, run


@pytest.mark.parametrize(("key", "value"), [
    ("MAX_CONCURRENT_DELIVERIES", "0"), ("ALLOW_PRIVATE_DESTINATIONS", "sometimes"),
    ("SECRET_OVERLAP_SECONDS", "-1"), ("RETENTION_SECONDS", "60"), ("FAILURE_LOG_INTERVAL_SECONDS", "-5"),
])
def test_bad_webhook_setting(tmp_path: Path, key: str, value: str) -> None:
    result = run(tmp_path, "migrate", **{f"METERD_WEBHOOKS__{key}": value})
    assert_config_error(result, f"webhooks.{key.lower()}", f"METERD_WEBHOOKS__{key}")
