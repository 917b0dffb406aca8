"""Alertmanager webhook payload, version 4 (the only version Alertmanager has ever sent)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Alertmanager marks "no end time yet" with Go's zero time.
_GO_ZERO_YEAR = 1

SEVERITY_ORDER = {"critical": 0, "error": 1, "warning": 2, "info": 3}


def severity_rank(severity: str | None) -> int:
    return SEVERITY_ORDER.get((severity or "").lower(), len(SEVERITY_ORDER))


class Alert(BaseModel):
    # Newer Alertmanager versions may add fields; ignore what we do not render.
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime | None = None  # Alertmanager's camelCase field names
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = ""

    @field_validator("startsAt", "endsAt")
    @classmethod
    def _zero_is_none(cls, value: datetime | None) -> datetime | None:
        if value is None or value.year <= _GO_ZERO_YEAR:
            return None
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "(no alertname)")

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")

    @property
    def identity(self) -> str:
        """Same alert across notifications: Alertmanager's fingerprint, else its sorted labels."""
        return self.fingerprint or repr(sorted(self.labels.items()))


class WebhookMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    groupKey: str = ""
    truncatedAlerts: int = Field(0, ge=0)
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[Alert] = Field(min_length=1)

    @property
    def severity(self) -> str:
        """The common severity label, else the most severe one among the alerts."""
        if common := self.commonLabels.get("severity"):
            return common
        return min((a.severity for a in self.alerts), key=severity_rank, default="")
