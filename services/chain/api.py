"""Chain routes: A takes orders, B prices them, C reserves stock and asks A about the customer."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Protocol

import httpx
from fastapi import APIRouter, Depends, Path, Query

from services.chain.models import (
    ID_PATTERN,
    PRICE_LIST_CENTS,
    TAX_CLASS,
    CustomerCheckPublic,
    Line,
    OrderCreate,
    OrderPublic,
    QuoteCreate,
    QuotePublic,
    ReservationCreate,
    ReservationPublic,
    ReservationsPublic,
)
from services.chain.settings import ChainSettings
from services.chain.stock import StockBook
from services.chain.tax import TaxRates
from services.kit.app import FlagsDep, app_state
from services.kit.errors import Conflict, DomainError, problems
from services.kit.http import ROUTE

log = logging.getLogger("chain")

orders = APIRouter(tags=["orders"])
pricing = APIRouter(tags=["pricing"])
stock = APIRouter(tags=["stock"])

CustomerPath = Annotated[str, Path(pattern=ID_PATTERN)]
OrderIdsQuery = Annotated[list[str], Query(alias="order_id", min_length=1, max_length=200)]
CURRENCY = "EUR"
CENT = Decimal("0.01")


class ChainState(Protocol):
    """The app state services/chain/app.py sets up; each role has the client for its own peer."""

    settings: ChainSettings
    pricing: httpx.Client  # chain-a's peer
    stock: httpx.Client  # chain-b's
    orders: httpx.Client  # chain-c's
    tax: TaxRates
    stock_book: StockBook


StateDep = Annotated[ChainState, Depends(app_state)]


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


@orders.post(
    "/orders",
    status_code=201,
    responses={
        201: {
            "links": {
                "CheckCustomer": {
                    "operationRef": "#/paths/~1customers~1{customer_id}~1check/get",
                    "parameters": {"customer_id": "$response.body#/customer_id"},
                }
            }
        },
        **problems(409, 502),
    },
)
def place_order(body: OrderCreate, state: StateDep) -> OrderPublic:
    """Take an order: price it (pricing reserves the stock), then confirm it."""
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
        tax=quote.tax,
        currency=quote.currency,
        reservation_id=quote.reservation.reservation_id,
    )


@orders.get("/customers/{customer_id}/check")
def check_customer(customer_id: CustomerPath) -> CustomerCheckPublic:
    """The fraud check: customers on hold may not order."""
    return CustomerCheckPublic(customer_id=customer_id, approved=not customer_id.startswith("hold"))


def price(lines: Sequence[Line], rates: Mapping[str, Decimal]) -> tuple[Decimal, Decimal]:
    """Net and VAT of an order: VAT per line at its class's rate, half-even to the cent."""
    net = tax = Decimal(0)
    for line in lines:
        line_net = Decimal(PRICE_LIST_CENTS[line.sku] * line.quantity).scaleb(-2)
        net += line_net
        tax += (line_net * rates[TAX_CLASS[line.sku]]).quantize(CENT, rounding=ROUND_HALF_EVEN)
    return net, tax


@pricing.post("/quotes", responses=problems(400, 409, 502))
def quote(body: QuoteCreate, state: StateDep) -> QuotePublic:
    """Price an order from the price list and reserve its stock."""
    unknown = sorted({line.sku for line in body.lines} - set(PRICE_LIST_CENTS))
    if unknown:
        raise DomainError(f"no price for {', '.join(unknown)}")
    rates = state.tax.rates({TAX_CLASS[line.sku] for line in body.lines}, key=body.order_id)
    net, tax = price(body.lines, rates)
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
        net=net,
        tax=tax,
        total=net + tax,
        currency=CURRENCY,
        reservation=ReservationPublic.model_validate(response.json()),
    )


@stock.post(
    "/reservations",
    status_code=201,
    responses={
        201: {
            "links": {
                "OrderReservations": {
                    "operationRef": "#/paths/~1reservations/get",
                    "parameters": {"order_id": "$response.body#/order_id"},
                }
            }
        },
        **problems(409, 502),
    },
)
def reserve(body: ReservationCreate, state: StateDep, flags: FlagsDep) -> ReservationPublic:
    """Hold stock for an order, once the customer passes the fraud check."""
    if flags.enabled("chain.fraud_callback", {"targetingKey": body.customer_id}):
        response = state.orders.get(
            f"/customers/{body.customer_id}/check",
            extensions={ROUTE: "/customers/{customer_id}/check"},
        )
        _raise_for_downstream(response, "customer check")
        if not CustomerCheckPublic.model_validate(response.json()).approved:
            raise Conflict(f"customer {body.customer_id} is on hold")
    reservation = ReservationPublic(
        reservation_id=uuid.uuid4().hex[:16],
        order_id=body.order_id,
        status="held",
        units=sum(line.quantity for line in body.lines),
    )
    state.stock_book.add(reservation)
    return reservation


# async: the stock book answers from memory, even when every worker waits on a peer.
@stock.get("/reservations")
async def reservations(order_ids: OrderIdsQuery, state: StateDep) -> ReservationsPublic:
    """The reservations the given orders hold (repeat order_id for several orders)."""
    book = state.stock_book
    return ReservationsPublic(data=[r for order_id in order_ids for r in book.of(order_id)])
