"""Chain settings: one package, three services (A orders, B pricing, C stock), chosen by role."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field

from services.kit.settings import ServiceSettings

Role = Literal["a", "b", "c"]


class ChainSettings(ServiceSettings):
    service_name: str = Field(
        "chain-a", validation_alias=AliasChoices("OTEL_SERVICE_NAME", "service_name")
    )
    role: Role = Field("a", validation_alias=AliasChoices("CHAIN_ROLE", "role"))
    # 8 workers per service, as the ops sizing sheet says: each request holds a worker while
    # it waits on the next hop, and 8 covered peak order traffic with room to spare.
    workers: int = Field(8, ge=1, validation_alias=AliasChoices("CHAIN_WORKERS", "workers"))
    # Where the next hop lives; the native lab and compose fill these in.
    pricing_url: str = Field(
        "http://127.0.0.1:8012", validation_alias=AliasChoices("CHAIN_PRICING_URL", "pricing_url")
    )
    stock_url: str = Field(
        "http://127.0.0.1:8013", validation_alias=AliasChoices("CHAIN_STOCK_URL", "stock_url")
    )
    orders_url: str = Field(
        "http://127.0.0.1:8011", validation_alias=AliasChoices("CHAIN_ORDERS_URL", "orders_url")
    )
    # A pricing call that fails is tried again: the pricing service restarts often in staging.
    pricing_attempts: int = Field(
        3, ge=1, validation_alias=AliasChoices("CHAIN_PRICING_ATTEMPTS", "pricing_attempts")
    )
