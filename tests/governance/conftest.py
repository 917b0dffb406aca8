"""Fixtures for the governance library's tests (helpers live in gov_helpers.py)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from tests.governance.gov_helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()
