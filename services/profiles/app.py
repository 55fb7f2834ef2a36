"""The profiles service: the slow external API the feed depends on."""

from __future__ import annotations

import random

from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider

from services.kit.app import create_service_app
from services.profiles import api
from services.profiles.quota import TokenBucket
from services.profiles.settings import ProfilesSettings


def create_app(
    settings: ProfilesSettings | None = None, *, tracer_provider: TracerProvider | None = None
) -> FastAPI:
    settings = settings or ProfilesSettings()
    app = create_service_app(
        settings, title="profiles", routers=[api.router], tracer_provider=tracer_provider
    )
    app.state.quota = TokenBucket(settings.rate_limit_rps, settings.rate_limit_burst)
    app.state.rng = random.Random()
    return app
