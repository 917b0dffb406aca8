from __future__ import annotations

import pytest

from tests.relay.fake_dingtalk import FakeDingTalk
from tests.relay.helpers import SECRET


@pytest.fixture
def fake_robot() -> FakeDingTalk:
    return FakeDingTalk(secret=SECRET)
