"""The regional tax store's client: VAT rates by tax class, behind a slow link.

An adapter, not part of the drill's code: the store and its lookup time are the environment.
The flag chain.b_latency_ms sets the lookup time (catalog metadata `injects: tax.lookup`), so a
team that removes the wait has to remove the tax rates with it, and the totals go wrong.
`rates` blocks the calling thread for the lookup; `arates` waits on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from decimal import Decimal

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from faults import Flags

LATENCY_FLAG = "chain.b_latency_ms"
# The store's table for the shop's region (DE): tea is food at the reduced rate.
RATES = {"reduced": Decimal("0.07"), "standard": Decimal("0.19")}


class UnknownTaxClass(LookupError):
    """The store has no rate for a tax class."""


class TaxRates:
    """Looks up VAT rates by tax class; each lookup takes the store's current latency."""

    def __init__(self, flags: Flags, tracer_provider: TracerProvider) -> None:
        self._flags = flags
        self._tracer = tracer_provider.get_tracer("services.chain.tax")

    def _latency_s(self, key: str) -> float:
        return self._flags.integer(LATENCY_FLAG, {"targetingKey": key}) / 1000

    def _answer(self, classes: Iterable[str]) -> dict[str, Decimal]:
        wanted = set(classes)
        missing = sorted(wanted - set(RATES))
        if missing:
            raise UnknownTaxClass(f"no tax rate for {', '.join(missing)}")
        return {name: RATES[name] for name in wanted}

    def rates(self, classes: Iterable[str], *, key: str) -> dict[str, Decimal]:
        """The rates of the given tax classes; key (the order id) lets a percentage hit some."""
        with self._tracer.start_as_current_span("tax rates lookup", kind=SpanKind.CLIENT):
            delay = self._latency_s(key)
            if delay > 0:
                time.sleep(delay)
            return self._answer(classes)

    async def arates(self, classes: Iterable[str], *, key: str) -> dict[str, Decimal]:
        """The same lookup without holding a thread while the store answers."""
        with self._tracer.start_as_current_span("tax rates lookup", kind=SpanKind.CLIENT):
            delay = self._latency_s(key)
            if delay > 0:
                await asyncio.sleep(delay)
            return self._answer(classes)
