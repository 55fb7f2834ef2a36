"""Feed settings."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from services.kit.settings import ServiceSettings


class FeedSettings(ServiceSettings):
    service_name: str = Field(
        "feed", validation_alias=AliasChoices("OTEL_SERVICE_NAME", "service_name")
    )
    profiles_url: str = Field(
        "http://127.0.0.1:8022", validation_alias=AliasChoices("PROFILES_URL", "profiles_url")
    )
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "redis_url"))
    # The data the lab seeds on first start; `drill seed` reseeds with another number.
    seed: int = Field(7, ge=0, validation_alias=AliasChoices("FEED_SEED", "seed"))
    seed_users: int = Field(
        2000, ge=1100, le=50_000, validation_alias=AliasChoices("FEED_SEED_USERS", "seed_users")
    )
