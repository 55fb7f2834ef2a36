"""circular-deadlock's judge: orders, totals, customers on hold and stock held."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from drill.collectors.truth import read_truth
from drill.native import LabConfig

# The provider's published rule for how profiles change: the judge recomputes it.

PROBE_ORDER = {"customer_id": "drill-probe", "lines": [{"sku": "TEA-SENCHA", "quantity": 1}]}
PROBE_TIMEOUT_S = 3.0
# An order answered "pending" is settled off the request path (the customer check runs later);
# once the load has stopped its reservation must be held or released within this.
SETTLE_S = 10.0
RESERVATIONS_PER_READ = 100
# Locust cuts off the requests in flight when it stops. An order sent this long before it
# began stopping had time for an answer or the checkout's 2 s timeout; a later one may not.
CUT_OFF_S = 5.0


def order_answered(base_url: str) -> bool:
    """Whether chain-a takes one order within the probe timeout."""
    try:
        with httpx.Client(base_url=base_url, timeout=PROBE_TIMEOUT_S, trust_env=False) as client:
            return client.post("/orders", json=PROBE_ORDER).status_code in (200, 201, 202)
    except httpx.HTTPError:
        return False


@dataclass
class ChainTruth:
    """The orders the shoppers sent and the answers they got (by the shopper's ref)."""

    sent: dict[str, dict[str, Any]]
    answered: dict[str, dict[str, Any]]
    stopping_at: float  # when Locust began to stop its users (epoch seconds)

    def unanswered(self) -> int:
        """Orders sent well before the load stopped that never got an answer or a timeout."""
        return sum(
            ref not in self.answered and record["at"] < self.stopping_at - CUT_OFF_S
            for ref, record in self.sent.items()
        )

    def orders_succeeded(self) -> float:
        """The share of orders whose last answer is the right one: taken (2xx), or a customer on
        hold turned away (409). A refusal tried again counts by its retry; an order with no
        answer fails, unless it was sent too close to the end of the load to have had one."""
        judged = ok = 0
        for ref, sent in self.sent.items():
            answer = self.answered.get(ref)
            if answer is None and sent["at"] >= self.stopping_at - CUT_OFF_S:
                continue
            judged += 1
            status = answer["http_status"] if answer is not None else None
            on_hold = sent["customer_id"].startswith("hold-")
            ok += status in (200, 201, 202) or (on_hold and status == 409)
        return ok / judged if judged else math.nan


def chain_truth(truth_path: Path) -> ChainTruth:
    sent: dict[str, dict[str, Any]] = {}
    answered: dict[str, dict[str, Any]] = {}
    stopping_at = math.inf  # no mark: Locust was killed, so every order had its chance
    for record in read_truth(truth_path):
        if record["event"] == "sent":
            sent[record["ref"]] = record
        elif record["event"] == "answered":
            # A refused order may be tried again: the last attempt's answer is the order's.
            earlier = answered.get(record["ref"])
            if earlier is None or record.get("attempt", 1) >= earlier.get("attempt", 1):
                answered[record["ref"]] = record
        elif record["event"] == "stopping":
            stopping_at = min(stopping_at, record["at"])
    return ChainTruth(sent, answered, stopping_at)


def collect_chain(base_url: str, truth_path: Path, config: LabConfig) -> dict[str, float]:
    """Whether the chain takes an order after the load; answers missing; totals that are wrong.

    Ground truth is the shopper's order and the total its own price list and tax rates give;
    the answer only says what the shop claimed.
    """
    truth = chain_truth(truth_path)
    mismatches = 0
    for ref, answer in truth.answered.items():
        if answer["http_status"] in (200, 201, 202):
            total = answer.get("total")
            expected = Decimal(truth.sent[ref]["expected_total"])
            if total is None or Decimal(str(total)) != expected:
                mismatches += 1
    return {
        "chain.orders_after_load": 1.0 if order_answered(base_url) else 0.0,
        "chain.unanswered_orders": float(truth.unanswered()),
        "chain.orders_succeeded": truth.orders_succeeded(),
        "chain.total_mismatches": float(mismatches),
    }


def _reservations(client: httpx.Client, order_ids: list[str]) -> dict[str, list[str]]:
    """Each order's reservation statuses, as chain-c's stock book holds them."""
    statuses: dict[str, list[str]] = {order_id: [] for order_id in order_ids}
    for start in range(0, len(order_ids), RESERVATIONS_PER_READ):
        chunk = order_ids[start : start + RESERVATIONS_PER_READ]
        response = client.get("/reservations", params={"order_id": chunk})
        response.raise_for_status()
        for reservation in response.json()["data"]:
            statuses.setdefault(reservation["order_id"], []).append(reservation["status"])
    return statuses


def collect_stock(base_url: str, truth_path: Path, config: LabConfig) -> dict[str, float]:
    """Orders of customers on hold that kept stock, and orders not holding stock exactly once.

    A confirmed order must hold one reservation. An order answered "pending" must settle within
    SETTLE_S of the load's end: held if the customer may order, released if on hold.
    """
    truth = chain_truth(truth_path)
    taken = {
        answer["order_id"]: (truth.sent[ref]["customer_id"].startswith("hold-"), answer["status"])
        for ref, answer in truth.answered.items()
        if answer["http_status"] in (200, 201, 202) and answer.get("order_id")
    }
    order_ids = sorted(taken)
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as client:
        deadline = time.monotonic() + SETTLE_S
        statuses = _reservations(client, order_ids)
        while time.monotonic() < deadline and any("pending" in s for s in statuses.values()):
            time.sleep(0.5)
            statuses = _reservations(client, order_ids)
    held_kept = not_once = confirmed = 0
    for order_id, (on_hold, status) in taken.items():
        holding = sum(s != "released" for s in statuses[order_id])
        if on_hold and (status == "confirmed" or holding):
            held_kept += 1
        if status == "confirmed" or not on_hold:
            confirmed += 1
            not_once += holding != 1 or "pending" in statuses[order_id]
    return {
        "chain.held_orders_confirmed": float(held_kept),
        "chain.orders_not_held_once": float(not_once),
        "chain.confirmed_orders": float(confirmed),
    }


def probe_chain(base_url: str) -> str | None:
    """Steady state: a chain left stuck by an earlier run must not be measured again."""
    if order_answered(base_url):
        return None
    return (
        f"chain-a at {base_url} answers /readyz but took no order within {PROBE_TIMEOUT_S:g} s: "
        "the chain is stuck (an earlier run?). Restart it with `drill restart chain`"
    )
