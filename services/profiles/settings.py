"""Profiles settings: the external API's own limits, which no flag changes."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from services.kit.settings import ServiceSettings


class ProfilesSettings(ServiceSettings):
    service_name: str = Field(
        "profiles", validation_alias=AliasChoices("OTEL_SERVICE_NAME", "service_name")
    )
    # The quota of the feed's API key. Well above what the feed sends with every trigger off,
    # so the limit only bites when a client fans out harder than it did in staging.
    rate_limit_rps: float = Field(
        500.0, gt=0, validation_alias=AliasChoices("PROFILES_RATE_LIMIT_RPS", "rate_limit_rps")
    )
    rate_limit_burst: int = Field(
        200, ge=1, validation_alias=AliasChoices("PROFILES_RATE_LIMIT_BURST", "rate_limit_burst")
    )
    max_batch: int = Field(
        100, ge=1, le=1000, validation_alias=AliasChoices("PROFILES_MAX_BATCH", "max_batch")
    )
    # Spread of the lognormal latency: at 0.15, p95 is 1.28 and p99 1.42 times the median.
    latency_sigma: float = Field(
        0.15, ge=0, le=2, validation_alias=AliasChoices("PROFILES_LATENCY_SIGMA", "latency_sigma")
    )
