"""The governance and profiling sections are the libraries' own models, validated when the
configuration loads, with the same error style as every other section."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from governance import GovernanceSettings, OutboundSettings
from profiling import ProfilingSettings
from service.config import ConfigError, Settings, load_settings


def _load(tmp_path: Path, data: dict) -> Settings:
    path = tmp_path / "meterd.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_settings(path)


def test_sections_are_the_libraries_models(tmp_path: Path) -> None:
    s = _load(tmp_path, {"governance": {"outbound": {"kafka": {"fail_max": 3}}, "tracing": {"ratio": 0.5}},
                         "profiling": {"rate_hz": 50}})
    assert isinstance(s.governance, GovernanceSettings)
    assert s.governance.outbound["kafka"] == OutboundSettings(fail_max=3)
    assert s.governance.tracing is not None and s.governance.tracing.ratio == 0.5
    assert isinstance(s.profiling, ProfilingSettings) and s.profiling.rate_hz == 50


@pytest.mark.parametrize(("data", "key"), [
    ({"governance": {"plugin": []}}, "governance.plugin: unknown setting"),
    ({"governance": {"outbound": {"kafka": {"fail_max": 0}}}}, "governance.outbound.kafka.fail_max"),
    ({"governance": {"tracing": {"ratio": 2}}}, "governance.tracing.ratio"),
    ({"governance": {"plugins": [{"enabled": True}]}}, "governance.plugins.0.type"),
    ({"profiling": {"rate_hz": 0}}, "profiling.rate_hz"),
])
def test_a_bad_key_is_named_at_load(tmp_path: Path, data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, data)
    assert key in str(info.value), str(info.value)


def test_environment_reaches_nested_library_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERD_PROFILING__RATE_HZ", "25")
    assert load_settings(None).profiling.rate_hz == 25
