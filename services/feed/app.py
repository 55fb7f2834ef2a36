"""The feed service: a user's timeline, with author profiles from the profiles API."""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider

from services.feed import api
from services.feed.jobs import SeedJobs
from services.feed.models import Base
from services.feed.seed import seed_if_empty
from services.feed.settings import FeedSettings
from services.kit.app import create_service_app
from services.kit.http import create_client


def create_app(
    settings: FeedSettings | None = None, *, tracer_provider: TracerProvider | None = None
) -> FastAPI:
    settings = settings or FeedSettings()
    app = create_service_app(
        settings,
        title="feed",
        routers=[api.router],
        metadata=Base.metadata,
        tracer_provider=tracer_provider,
        on_startup=[_seed, _open_profiles],
        on_shutdown=[_close_profiles],
    )
    app.state.seed_jobs = SeedJobs()
    return app


def _seed(app: FastAPI) -> None:
    settings: FeedSettings = app.state.settings
    seed_if_empty(app.state.engine, settings.seed, settings.seed_users)


def _open_profiles(app: FastAPI) -> None:
    app.state.profiles = create_client(
        app.state.settings.service_name,
        "profiles",
        app.state.settings.profiles_url,
        timeout=30.0,
        tracer_provider=app.state.tracer_provider,
    )


def _close_profiles(app: FastAPI) -> None:
    app.state.profiles.close()
