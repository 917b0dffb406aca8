"""meterd configuration: YAML file, then ``METERD_*`` environment variables (nested with ``__``).

Precedence, highest first: command-line flags, environment, YAML file, defaults. Unknown keys in
the YAML file are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from governance import GovernanceSettings
from profiling import ProfilingSettings
from service.config_sections import (
    REGION_NAME,
    AdminSettings,
    BillingSettings,
    ConsumerSettings,
    DatabaseSettings,
    GrpcSettings,
    HttpSettings,
    IngestSettings,
    KafkaSettings,
    LogSettings,
    WebhookSettings,
    default_data_dir,
)

__all__ = ["REGION_NAME", "AdminSettings", "BillingSettings", "ConfigError", "ConsumerSettings", "DatabaseSettings",
           "GrpcSettings", "HttpSettings", "IngestSettings", "KafkaSettings", "LogSettings", "Settings",
           "WebhookSettings", "default_data_dir", "load_settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERD_", env_nested_delimiter="__", extra="forbid")

    service_name: str = Field("meterd", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # development: a random admin token is generated when none is set. production: refuse to start.
    mode: Literal["development", "production"] | None = None
    admin_token: SecretStr | None = None
    data_dir: Path = Field(default_factory=default_data_dir)
    # `meterd up` writer processes: auto = the CPUs this process may use (affinity, cgroup quota); 1 = one process
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = "auto"
    http: HttpSettings = HttpSettings()
    grpc: GrpcSettings = GrpcSettings()
    admin: AdminSettings = AdminSettings()
    database: DatabaseSettings = DatabaseSettings()
    kafka: KafkaSettings = KafkaSettings()
    ingest: IngestSettings = IngestSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    webhooks: WebhookSettings = WebhookSettings()
    billing: BillingSettings = BillingSettings()
    log: LogSettings = LogSettings()
    # The governance and profiling libraries' own models; relay is validated by service.relay.
    governance: GovernanceSettings = GovernanceSettings()
    profiling: ProfilingSettings = ProfilingSettings()
    relay: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init kwargs carry the YAML file; the environment must win over it.
        return env_settings, init_settings

    def database_url(self) -> str:
        if self.database.url is not None:
            return self.database.url.get_secret_value()
        return f"sqlite+aiosqlite:///{(self.data_dir / 'meterd.db').resolve()}"


class ConfigError(Exception):
    """A configuration problem, already phrased for a person (the CLI prints it and exits 2)."""


def _describe(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        env = "METERD_" + "__".join(str(p).upper() for p in err["loc"])
        msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {key}: {msg} (YAML key '{key}' or env {env})")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Reads YAML (optional), applies the environment, then command-line overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    settings = _override(settings, overrides or {}, ())
    _check_promises(settings)
    return settings


def _check_promises(s: Settings) -> None:
    """Settings valid one by one that together would break a promise (one line each)."""
    if s.consumer.dedupe_retention_seconds < s.ingest.max_past_seconds:
        raise ConfigError(
            f"invalid configuration: consumer.dedupe_retention_seconds ({s.consumer.dedupe_retention_seconds}) "
            f"must be at least ingest.max_past_seconds ({s.ingest.max_past_seconds}), or a batch retried after "
            "its id is forgotten while its records are still accepted would be counted twice")


def _override(model: BaseModel, overrides: dict[str, Any], path: tuple[str, ...]) -> Any:
    """Applies command-line values on top of file and environment (flags win), validated like the
    rest: a section is re-validated with the flag's value merged in."""
    update: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict):
            update[key] = _override(getattr(model, key), value, (*path, key))
        else:
            update[key] = value
    if not update:
        return model
    if isinstance(model, BaseSettings):  # the root: re-validating would re-read the environment
        return model.model_copy(update=update)
    try:
        return type(model).model_validate({**model.model_dump(), **update})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join((*path, *(str(p) for p in err["loc"])))
            lines.append(f"  {key}: {err['msg']} (command-line flag)")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
