"""Ledger settings."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from services.kit.settings import ServiceSettings
from services.ledger.models import Currency


class LedgerSettings(ServiceSettings):
    service_name: str = Field(
        "ledger", validation_alias=AliasChoices("OTEL_SERVICE_NAME", "service_name")
    )
    base_currency: Currency = Field(
        "USD", validation_alias=AliasChoices("LEDGER_BASE_CURRENCY", "base_currency")
    )
    # Every 5 s, matching the Prometheus scrape interval.
    audit_interval_s: float = Field(
        5.0, gt=0, validation_alias=AliasChoices("LEDGER_AUDIT_INTERVAL_S", "audit_interval_s")
    )
