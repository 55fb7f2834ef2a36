"""A shop front for the chain: customers place small tea orders against chain-a.

Run alone for debugging: `python loadtests/chain.py` places a few orders at CHAIN_A_URL.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, task
from recorder import CLIENT_TIMEOUT_S

SKUS = ("TEA-EARL-GREY", "TEA-SENCHA", "MUG-STONEWARE", "KETTLE-STEEL", "INFUSER-MESH")
CUSTOMERS_PER_RUN = 50
# A checkout page gives up after 2 s and shows "try again": a hung order becomes a failure.
ORDER_TIMEOUT_S = CLIENT_TIMEOUT_S or 2.0


class Shopper(HttpUser):
    """Places orders of one to three lines and checks the confirmation."""

    # The Locust web UI (compose) starts with this host; `drill verify` passes --host.
    host = os.environ.get("CHAIN_A_URL", "http://127.0.0.1:8011")
    wait_time = between(0.2, 0.6)

    def on_start(self) -> None:
        self.rng = random.Random()

    @task
    def place_order(self) -> None:
        lines = [
            {"sku": sku, "quantity": self.rng.randint(1, 3)}
            for sku in self.rng.sample(SKUS, self.rng.randint(1, 3))
        ]
        order = {"customer_id": f"cust-{self.rng.randrange(CUSTOMERS_PER_RUN)}", "lines": lines}
        with self.client.post(
            "/orders",
            json=order,
            timeout=ORDER_TIMEOUT_S,
            name="/orders",
            catch_response=True,
        ) as response:
            if response.status_code not in (200, 201, 202):
                response.failure(f"status {response.status_code or 'timeout'}")
                return
            body = response.json()
            if body.get("customer_id") != order["customer_id"] or not body.get("order_id"):
                response.failure(f"order answer does not match the order: {body}")
            elif body.get("status") not in ("confirmed", "pending"):
                response.failure(f"order in unexpected status {body.get('status')!r}")


if __name__ == "__main__":
    from locust import run_single_user

    run_single_user(Shopper)
