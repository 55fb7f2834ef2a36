"""Settings every service shares, read from the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What any lab service needs to know about its surroundings."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    service_name: str = Field(
        "service", validation_alias=AliasChoices("OTEL_SERVICE_NAME", "service_name")
    )
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "database_url")
    )
    state_dir: Path = Field(
        Path(".drill"), validation_alias=AliasChoices("DRILL_STATE_DIR", "state_dir")
    )
    otlp_endpoint: str | None = Field(
        None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "otlp_endpoint")
    )
    log_level: str = Field("INFO", validation_alias=AliasChoices("LOG_LEVEL", "log_level"))
    team: str = Field("local", validation_alias=AliasChoices("DRILL_TEAM", "team"))
    flag_poll_ms: int = Field(
        200, ge=50, validation_alias=AliasChoices("DRILL_FLAG_POLL_MS", "flag_poll_ms")
    )
    # Payment and feed bodies are small; anything past 16 KiB is a client bug or abuse.
    max_body_bytes: int = Field(
        16 * 1024, validation_alias=AliasChoices("DRILL_MAX_BODY_BYTES", "max_body_bytes")
    )

    @property
    def flags_file(self) -> Path:
        return self.state_dir / "flags.json"
