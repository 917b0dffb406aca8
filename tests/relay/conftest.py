from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relay import helpers
from tests.relay.fake_dingtalk import FakeDingTalk
from tests.relay.helpers import SECRET


@pytest.fixture(autouse=True)
def relay_data_dir(tmp_path: Path) -> Iterator[Path]:
    """Each test's relay stores its queued notifications under its own tmp_path."""
    helpers.DATA_DIR = tmp_path / "relay-data"
    yield helpers.DATA_DIR
    helpers.DATA_DIR = None


@pytest.fixture
def fake_robot() -> FakeDingTalk:
    return FakeDingTalk(secret=SECRET)
