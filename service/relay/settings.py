"""Configuration of the DingTalk relay (the `relay:` section of meterd's config).

A plain pydantic model: the service's BaseSettings loads YAML and `METERD_RELAY__...` environment
variables and hands the section to `RelaySettings.model_validate`. Secrets are SecretStr so they
never show up in reprs or logs; env example: `METERD_RELAY__ROBOTS__ONCALL__SECRET=SEC...`.
Environment variable names are case-insensitive, so robot names should be lower case.
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from governance.plugins.quota import limits_string

# DingTalk's documented ceilings for a custom robot: 20 messages per minute, 20,000 bytes per message.
DINGTALK_MAX_MESSAGES_PER_MINUTE = 20
DINGTALK_MAX_MESSAGE_BYTES = 20_000


class _Section(BaseModel):
    # A typo in a key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class MentionSettings(_Section):
    """Who gets @-mentioned in messages that contain firing alerts."""

    mobiles: list[str] = Field(default_factory=list)
    user_ids: list[str] = Field(default_factory=list)
    # @all when any firing alert in the message has one of these severities, e.g. ["critical"].
    at_all_for_severities: list[str] = Field(default_factory=list)
    # Resolved notices rarely need to wake anybody up.
    on_resolved: bool = False


class RobotSettings(_Section):
    """One DingTalk custom robot (one group chat)."""

    # https://oapi.dingtalk.com/robot/send?access_token=... ; the token is a credential: never logged.
    webhook_url: SecretStr
    # The robot's "加签" secret (SEC...). None for robots secured by keyword or IP allow-list only.
    secret: SecretStr | None = None
    mentions: MentionSettings = Field(default_factory=MentionSettings)
    # Per-robot override of RelaySettings.max_messages_per_minute.
    max_messages_per_minute: int | None = Field(None, ge=1, le=DINGTALK_MAX_MESSAGES_PER_MINUTE)

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http(s) URL")
        return value


class RouteSettings(_Section):
    """Which robot receives a notification posted to the default path `/alerts`.

    Looked up in order: the Alertmanager receiver name, then the notification's severity (the
    common `severity` label, else the most severe alert), then `default`.
    """

    receivers: dict[str, str] = Field(default_factory=dict)
    severities: dict[str, str] = Field(default_factory=dict)
    default: str | None = None


class BasicAuthSettings(_Section):
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    # Read at start-up (Alertmanager's `password_file`); one of password / password_file.
    password_file: Path | None = None


MIN_TOKEN_LENGTH = 16


class AuthSettings(_Section):
    """Who may post notifications, matching Alertmanager's webhook `http_config`: a bearer token
    (`authorization: {credentials_file: ...}`) and/or basic auth. Neither set: no authentication
    (only sensible on a loopback or otherwise private address)."""

    bearer_token: SecretStr | None = None
    # A file holding the token (surrounding whitespace ignored): the same file Alertmanager's
    # `credentials_file` points at, so the secret exists once.
    bearer_token_file: Path | None = None
    basic: BasicAuthSettings | None = None
    # Failed credential checks per peer address (audit N21): beyond it the peer gets 429 before its
    # credentials are compared, which is what stops guessing.
    failed_limit: str = "20/second;600/minute"

    @field_validator("bearer_token")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the bearer token needs at least {MIN_TOKEN_LENGTH} characters (use a random one)")
        return v

    @field_validator("failed_limit")
    @classmethod
    def _limits(cls, v: str) -> str:
        return limits_string(v)

    @model_validator(mode="after")
    def _one_source_each(self) -> AuthSettings:
        if self.bearer_token is not None and self.bearer_token_file is not None:
            raise ValueError("set bearer_token or bearer_token_file, not both")
        if self.basic is not None and (self.basic.password is None) == (self.basic.password_file is None):
            raise ValueError("basic auth needs exactly one of password / password_file")
        return self


class RelaySettings(_Section):
    # Loopback unless configured: the relay can page people, so exposing it is a decision.
    host: str = "127.0.0.1"
    port: int = Field(8060, ge=0, le=65535)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    # Where notifications the relay answered 202 for are kept (notifications.sqlite3) until sent,
    # so a restart does not lose them. None: the relay never takes a notification over; one it
    # cannot send within ack_timeout_s is answered 503 and Alertmanager retries it.
    data_dir: Path | None = None
    # Whole webhook body; refused with 413 while it is being read, not after.
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # A body must arrive within this long after its headers (a trickled body holds a task).
    body_timeout_s: float = Field(10.0, gt=0, le=300)
    header_timeout_s: float = Field(10.0, gt=0, le=300)
    max_header_bytes: int = Field(65536, ge=1024)
    robots: dict[str, RobotSettings] = Field(default_factory=dict)
    routes: RouteSettings = Field(default_factory=RouteSettings)

    max_messages_per_minute: int = Field(DINGTALK_MAX_MESSAGES_PER_MINUTE, ge=1, le=DINGTALK_MAX_MESSAGES_PER_MINUTE)
    # Whole JSON body, UTF-8 bytes.
    max_message_bytes: int = Field(DINGTALK_MAX_MESSAGE_BYTES, ge=1000, le=DINGTALK_MAX_MESSAGE_BYTES)
    # Notifications for one robot arriving within this window go out as one message.
    merge_window_s: float = Field(1.0, ge=0, le=60)
    # How long a webhook request waits for its delivery before the relay takes ownership of it and
    # answers 202. Keep it under Alertmanager's notification timeout (10 s at the least).
    ack_timeout_s: float = Field(8.0, gt=0, le=60)
    send_timeout_s: float = Field(5.0, gt=0, le=60)
    # Back-pressure: beyond this many queued notifications per robot, answer 503 so Alertmanager
    # keeps them and retries, instead of the relay growing without bound.
    max_pending_notifications: int = Field(1000, ge=1)
    # Queued notifications the relay owns are given up (logged, counted) after this long.
    max_pending_age_s: float = Field(900.0, gt=0)
    retry_backoff_initial_s: float = Field(1.0, gt=0)
    retry_backoff_max_s: float = Field(30.0, gt=0)

    title_prefix: str = "[meterd]"
    timezone: str = "UTC"
    # Links shown in every message: Grafana's base URL and Alertmanager's UI (overrides the
    # externalURL Alertmanager sends, which is often an internal address).
    dashboard_url: str | None = None
    alertmanager_url: str | None = None
    # Relative runbook_url / dashboard_url annotations are joined to these bases.
    runbook_base_url: str | None = None
    # Long descriptions are cut to this many characters per annotation.
    max_annotation_chars: int = Field(1000, ge=50)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _routes_name_robots(self) -> RelaySettings:
        targets = [*self.routes.receivers.values(), *self.routes.severities.values()]
        if self.routes.default is not None:
            targets.append(self.routes.default)
        unknown = sorted({t for t in targets if t not in self.robots})
        if unknown:
            raise ValueError(f"routes name unknown robots: {', '.join(unknown)}")
        return self

    def robot_rate(self, name: str) -> int:
        robot = self.robots[name]
        return robot.max_messages_per_minute or self.max_messages_per_minute
