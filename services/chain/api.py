"""Chain routes: A takes orders, B prices them, C reserves stock and asks A about the customer."""

from __future__ import annotations

import logging
import time
import uuid
from decimal import Decimal
from typing import Annotated

import httpx
from fastapi import APIRouter, Path, Request

from services.chain.models import (
    ID_PATTERN,
    PRICE_LIST_CENTS,
    CustomerCheckPublic,
    OrderCreate,
    OrderPublic,
    QuoteCreate,
    QuotePublic,
    ReservationCreate,
    ReservationPublic,
)
from services.kit.app import FlagsDep
from services.kit.errors import Conflict, DomainError
from services.kit.http import ROUTE

log = logging.getLogger("chain")

orders = APIRouter(tags=["orders"])
pricing = APIRouter(tags=["pricing"])
stock = APIRouter(tags=["stock"])

CustomerPath = Annotated[str, Path(pattern=ID_PATTERN)]
CURRENCY = "EUR"


class DownstreamError(DomainError):
    """A service this one depends on did not give a usable answer."""

    status_code = 502
    code = "bad_gateway"


class Rejected(DomainError):
    """A request a downstream service refused as invalid."""

    status_code = 422
    code = "unprocessable"


def _raise_for_downstream(response: httpx.Response, what: str) -> None:
    if response.status_code == 409:
        raise Conflict(response.json().get("detail", f"{what} refused"))
    if 400 <= response.status_code < 500:
        raise Rejected(f"{what}: {response.json().get('detail', response.status_code)}")
    if response.status_code >= 400:
        raise DownstreamError(f"{what} answered {response.status_code}")


@orders.post("/orders", status_code=201)
def place_order(body: OrderCreate, request: Request) -> OrderPublic:
    """Take an order: price it (pricing reserves the stock), then confirm it."""
    state = request.app.state
    order_id = uuid.uuid4().hex[:16]
    quote_request = QuoteCreate(order_id=order_id, customer_id=body.customer_id, lines=body.lines)
    response: httpx.Response | None = None
    for attempt in range(1, state.settings.pricing_attempts + 1):
        try:
            response = state.pricing.post(
                "/quotes",
                json=quote_request.model_dump(mode="json"),
                extensions={ROUTE: "/quotes"},
            )
        except httpx.TransportError as exc:
            log.warning("pricing attempt %d failed: %s", attempt, type(exc).__name__)
            continue
        if response.status_code < 500:
            break
        log.warning("pricing attempt %d answered %d", attempt, response.status_code)
    if response is None:
        raise DownstreamError("pricing unreachable")
    _raise_for_downstream(response, "pricing")
    quote = QuotePublic.model_validate(response.json())
    log.info("order %s confirmed", order_id, extra={"order_id": order_id})
    return OrderPublic(
        order_id=order_id,
        customer_id=body.customer_id,
        status="confirmed",
        total=quote.total,
        currency=quote.currency,
        reservation_id=quote.reservation.reservation_id,
    )


@orders.get("/customers/{customer_id}/check")
def check_customer(customer_id: CustomerPath) -> CustomerCheckPublic:
    """The fraud check: customers on hold may not order."""
    return CustomerCheckPublic(customer_id=customer_id, approved=not customer_id.startswith("hold"))


@pricing.post("/quotes")
def quote(body: QuoteCreate, request: Request, flags: FlagsDep) -> QuotePublic:
    """Price an order from the price list and reserve its stock."""
    state = request.app.state
    unknown = sorted({line.sku for line in body.lines} - set(PRICE_LIST_CENTS))
    if unknown:
        raise DomainError(f"no price for {', '.join(unknown)}")
    # The regional tax table lives in a slow store; the flag stands in for its lookup time.
    lookup_ms = flags.integer("chain.b_latency_ms", {"targetingKey": body.order_id})
    if lookup_ms:
        time.sleep(lookup_ms / 1000)
    cents = sum(PRICE_LIST_CENTS[line.sku] * line.quantity for line in body.lines)
    reservation_request = ReservationCreate(
        order_id=body.order_id, customer_id=body.customer_id, lines=body.lines
    )
    response = state.stock.post(
        "/reservations",
        json=reservation_request.model_dump(mode="json"),
        extensions={ROUTE: "/reservations"},
    )
    _raise_for_downstream(response, "stock")
    return QuotePublic(
        order_id=body.order_id,
        total=Decimal(cents).scaleb(-2),
        currency=CURRENCY,
        reservation=ReservationPublic.model_validate(response.json()),
    )


@stock.post("/reservations", status_code=201)
def reserve(body: ReservationCreate, request: Request, flags: FlagsDep) -> ReservationPublic:
    """Hold stock for an order, once the customer passes the fraud check."""
    state = request.app.state
    if flags.enabled("chain.fraud_callback", {"targetingKey": body.customer_id}):
        response = state.orders.get(
            f"/customers/{body.customer_id}/check",
            extensions={ROUTE: "/customers/{customer_id}/check"},
        )
        _raise_for_downstream(response, "customer check")
        if not CustomerCheckPublic.model_validate(response.json()).approved:
            raise Conflict(f"customer {body.customer_id} is on hold")
    return ReservationPublic(
        reservation_id=uuid.uuid4().hex[:16],
        order_id=body.order_id,
        status="held",
        units=sum(line.quantity for line in body.lines),
    )
