"""A shop front for the chain: customers place small tea orders against chain-a.

Every order is ground truth for drill verify: who ordered what, the total the shop's own price
list and tax rates give, and the answer (status, total, how long it took). A share of the
customers are on hold; the fraud check must turn them away. An order refused with 503 and a
short Retry-After is placed once more after that wait; each attempt's answer is recorded.

CHAIN_ARRIVALS=bursty makes shoppers arrive together, once a second (the overload check).
Run alone for debugging: `python loadtests/chain.py` places a few orders at CHAIN_A_URL.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from locust import HttpUser, between, events, task
from recorder import CLIENT_TIMEOUT_S, record_truth

# The shop's catalogue as the checkout knows it: (price in cents, VAT rate). Kept apart from
# the services' tables on purpose: the check must not move when a team edits the services.
CATALOGUE = {
    "TEA-EARL-GREY": (650, Decimal("0.07")),
    "TEA-SENCHA": (820, Decimal("0.07")),
    "MUG-STONEWARE": (1450, Decimal("0.19")),
    "KETTLE-STEEL": (3990, Decimal("0.19")),
    "INFUSER-MESH": (390, Decimal("0.19")),
}
CENT = Decimal("0.01")
CUSTOMERS_PER_RUN = 50
# One order in ten comes from a customer on hold (their ids start with "hold-").
HOLD_SHARE = 0.1
# The checkout page gives up after this and shows "try again": the judge's setting.
ORDER_TIMEOUT_S = CLIENT_TIMEOUT_S or 2.0
BURST_PERIOD_S = 1.0
# A shop shedding load answers 503 with Retry-After. The checkout page then waits that long (if
# it is no longer than this) and places the order once more, as a customer pressing "try again"
# would; the judge counts the order by its last answer.
RETRY_LIMIT_S = 2.0


def expected_total(lines: list[dict[str, Any]]) -> Decimal:
    """Net plus VAT per line at the line's rate, half-even to the cent, as the shop charges."""
    total = Decimal(0)
    for line in lines:
        cents, rate = CATALOGUE[line["sku"]]
        net = Decimal(cents * line["quantity"]).scaleb(-2)
        total += net + (net * rate).quantize(CENT, rounding=ROUND_HALF_EVEN)
    return total


def random_order(rng: random.Random) -> dict[str, Any]:
    lines = [
        {"sku": sku, "quantity": rng.randint(1, 3)}
        for sku in rng.sample(sorted(CATALOGUE), rng.randint(1, 3))
    ]
    prefix = "hold" if rng.random() < HOLD_SHARE else "cust"
    return {"customer_id": f"{prefix}-{rng.randrange(CUSTOMERS_PER_RUN)}", "lines": lines}


def _until_next_burst(_user: Any) -> float:
    """Everyone waits for the same tick, so orders arrive in bursts of every shopper at once."""
    return BURST_PERIOD_S - time.time() % BURST_PERIOD_S


@events.test_stopping.add_listener
def _mark_stopping(**_kwargs: Any) -> None:
    # Locust cuts off requests still in flight when it stops; the judge spares orders sent
    # shortly before this mark, and no others.
    record_truth({"event": "stopping", "at": time.time()})


class Shopper(HttpUser):
    """Places orders of one to three lines, checks the answer, and records what happened."""

    # The Locust web UI (compose) starts with this host; `drill verify` passes --host.
    host = os.environ.get("CHAIN_A_URL", "http://127.0.0.1:8011")
    wait_time = (
        _until_next_burst if os.environ.get("CHAIN_ARRIVALS") == "bursty" else between(0.2, 0.6)
    )

    def on_start(self) -> None:
        self.rng = random.Random()

    @task
    def place_order(self) -> None:
        order = random_order(self.rng)
        total = expected_total(order["lines"])
        ref = uuid.uuid4().hex
        # Written before the order goes out: an order that never comes back is still known.
        record_truth(
            {"ref": ref, "event": "sent", "at": time.time(), **order, "expected_total": str(total)}
        )
        for attempt in (1, 2):
            answer = self._attempt(order, total, ref, attempt)
            record_truth(answer)
            wait = retry_wait(answer)
            if wait is None or attempt == 2:
                break
            time.sleep(wait)  # gevent's sleep: the other shoppers go on

    def _attempt(
        self, order: dict[str, Any], total: Decimal, ref: str, attempt: int
    ) -> dict[str, Any]:
        """One POST of the order; what came back, as a truth record."""
        on_hold = order["customer_id"].startswith("hold-")
        answer: dict[str, Any] = {"ref": ref, "event": "answered", "http_status": 0}
        answer["attempt"] = attempt
        started = time.perf_counter()
        with self.client.post(
            "/orders",
            json=order,
            timeout=ORDER_TIMEOUT_S,
            name="/orders",
            catch_response=True,
        ) as response:
            answer["ms"] = round(1000 * (time.perf_counter() - started), 1)
            answer["http_status"] = response.status_code
            answer["retry_after"] = response.headers.get("Retry-After")
            if on_hold and response.status_code == 409:
                pass  # the fraud check turned a customer on hold away, as it should
            elif response.status_code not in (200, 201, 202):
                response.failure(f"status {response.status_code or 'timeout'}")
            else:
                body = response.json()
                answer.update(
                    order_id=body.get("order_id"),
                    status=body.get("status"),
                    total=body.get("total"),
                )
                if body.get("customer_id") != order["customer_id"] or not body.get("order_id"):
                    response.failure(f"order answer does not match the order: {body}")
                elif body.get("status") not in ("confirmed", "pending"):
                    response.failure(f"order in unexpected status {body.get('status')!r}")
                elif body.get("total") is None or Decimal(body["total"]) != total:
                    response.failure(f"total {body.get('total')}, the price list says {total}")
        return answer


def retry_wait(answer: dict[str, Any]) -> float | None:
    """Seconds to wait before trying a refused order again, or None: not a refusal to retry."""
    if answer["http_status"] != 503:
        return None
    try:
        wait = float(answer.get("retry_after") or "")
    except ValueError:
        return None  # an HTTP date or garbage: the checkout shows "try again later"
    return wait if 0 <= wait <= RETRY_LIMIT_S else None


if __name__ == "__main__":
    from locust import run_single_user

    run_single_user(Shopper)
