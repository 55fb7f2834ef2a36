"""A payment client for the ledger: real-looking amounts, a timeout, and same-key retries.

Run alone for debugging: `python loadtests/ledger.py` posts a few payments to LEDGER_URL.
"""

from __future__ import annotations

import os
import random
import uuid
from typing import Any

from locust import HttpUser, between, task
from recorder import RUN_ID, record_truth

# Weighted like a European merchant's traffic; JPY has no minor unit.
CURRENCIES = (("USD", 40), ("EUR", 25), ("GBP", 15), ("CHF", 10), ("JPY", 10))
# Spread over many accounts, as a merchant's customers are: with 8 accounts the shipped
# ledger's posting time grew all run long (the clean baseline's p95 rose with every second). At
# some 32 payments a second, 200 accounts hold about 10 postings each after 60 s.
ACCOUNTS_PER_RUN = 200
# Short attempts, then one long attempt to learn the outcome, as payment SDKs do.
ATTEMPT_TIMEOUTS_S = (1.0, 1.0, 1.0, 10.0)


def random_payment(rng: random.Random) -> dict[str, str]:
    currency = rng.choices([c for c, _ in CURRENCIES], [w for _, w in CURRENCIES])[0]
    if currency == "JPY":
        amount = str(rng.randint(100, 60_000))
    else:
        amount = f"{rng.randint(1, 900)}.{rng.randint(0, 99):02d}"
    return {
        "account_id": f"{RUN_ID}-acct-{rng.randrange(ACCOUNTS_PER_RUN)}",
        "direction": "credit" if rng.random() < 0.8 else "debit",
        "currency": currency,
        "amount": amount,
    }


class PaymentClient(HttpUser):
    """Posts payments and reads balances; records every payment it sent as ground truth.

    The record holds only what the client knows on its own (the payment, its key, how many
    attempts it took and how it ended), never what the ledger answered: a checker that trusted
    the reply's currency or rate would accept any booking the ledger chose to make.
    """

    # The Locust web UI (compose) starts with this host; `drill verify` passes --host.
    host = os.environ.get("LEDGER_URL", "http://127.0.0.1:8001")
    # Some 32 payments a second from 20 clients. At 50 (and at 85), one pinned core (the slowest
    # machine) shared with other labs queued requests: clean baseline POST p95 80-257 ms.
    wait_time = between(0.2, 0.8)

    def on_start(self) -> None:
        self.rng = random.Random()

    @task(6)
    def pay(self) -> None:
        payment = random_payment(self.rng)
        key = uuid.uuid4().hex
        outcome, attempts = "unknown", 0
        for timeout in ATTEMPT_TIMEOUTS_S:
            attempts += 1
            with self.client.post(
                "/transactions",
                json=payment,
                headers={"Idempotency-Key": key},
                timeout=timeout,
                name="/transactions",
                catch_response=True,
            ) as response:
                status = response.status_code
                if status in (200, 201):
                    body = response.json()
                    if body.get("amount_received") != payment["amount"]:
                        response.failure(f"posting echoes amount {body.get('amount_received')}")
                        break
                    outcome = "accepted"
                    break
                if 400 <= status < 500 and status not in (408, 409, 429):
                    response.failure(f"rejected with {status}: {response.text[:200]}")
                    outcome = "rejected"
                    break
                response.failure(f"status {status or 'timeout'}; retrying with the same key")
        entry: dict[str, Any] = {"key": key, "outcome": outcome, "attempts": attempts, **payment}
        record_truth(entry)

    @task(1)
    def read_balance(self) -> None:
        account = f"{RUN_ID}-acct-{self.rng.randrange(ACCOUNTS_PER_RUN)}"
        with self.client.get(
            f"/accounts/{account}/balances",
            name="/accounts/{account_id}/balances",
            timeout=5,
            catch_response=True,
        ) as response:
            if response.status_code == 404:
                response.success()  # no payment has reached this account yet
            elif response.status_code == 200 and "balances" not in response.json():
                response.failure("balance response without balances")


if __name__ == "__main__":
    from locust import run_single_user

    run_single_user(PaymentClient)
