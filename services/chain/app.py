"""The chain: one package that runs as A (orders), B (pricing) or C (stock), chosen by role."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, FastAPI
from opentelemetry.sdk.trace import TracerProvider

from services.chain import api
from services.chain.metrics import WORKERS, WORKERS_BUSY
from services.chain.settings import ChainSettings
from services.chain.stock import StockBook
from services.chain.tax import TaxRates
from services.kit.app import create_service_app
from services.kit.http import create_client

ROUTERS: dict[str, APIRouter] = {"a": api.orders, "b": api.pricing, "c": api.stock}
# The peer each role calls, as (app.state attribute, peer service, settings URL field).
PEERS = {
    "a": ("pricing", "chain-b", "pricing_url"),
    "b": ("stock", "chain-c", "stock_url"),
    "c": ("orders", "chain-a", "orders_url"),
}


def create_app(
    settings: ChainSettings | None = None, *, tracer_provider: TracerProvider | None = None
) -> FastAPI:
    settings = settings or ChainSettings()

    def start(app: FastAPI) -> None:
        # Sync routes run on this pool; the setting sizes it like any app server's workers.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = settings.workers
        WORKERS.labels(settings.service_name).set(settings.workers)
        WORKERS_BUSY.labels(settings.service_name).set_function(lambda: limiter.borrowed_tokens)
        attribute, peer, url_field = PEERS[settings.role]
        # Internal calls are fast; the peer answers or the request fails with it.
        client = create_client(
            settings.service_name,
            peer,
            getattr(settings, url_field),
            timeout=None,
            tracer_provider=app.state.tracer_provider,
        )
        setattr(app.state, attribute, client)
        app.state.peer_client = client
        app.state.tax = TaxRates(app.state.flags, app.state.tracer_provider)
        app.state.stock_book = StockBook()

    def stop(app: FastAPI) -> None:
        app.state.peer_client.close()

    return create_service_app(
        settings,
        title=f"chain ({settings.service_name})",
        routers=[ROUTERS[settings.role]],
        tracer_provider=tracer_provider,
        on_startup=[start],
        on_shutdown=[stop],
    )
