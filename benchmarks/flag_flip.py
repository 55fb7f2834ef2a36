"""Flip-to-effect time: from writing the flag state file to the ledger booking accordingly.

Starts a native lab (shipped code) and toggles `ledger.fx_conversion` 40 times with
faults.set_flags, alternating on and off. The clock starts just before the write; a EUR payment
is then posted every 10 ms until the response's booked currency shows the new state (USD when
conversion is on, EUR when off). A random 0-250 ms pause before each flip keeps the flips from
locking onto the services' 200 ms flag poll.

Run: .venv/bin/python benchmarks/flag_flip.py
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from _lab import backend_note, header, http_client, median, percentile, print_table, running_lab

import faults

FLAG = "ledger.fx_conversion"
POLL_S = 0.010
TIMEOUT_S = 5.0
BOUND_MS = 1000.0
EXPECTED_CURRENCY = {"on": "USD", "off": "EUR"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    backend = backend_note()
    header(
        "Flag flip-to-effect time (ledger.fx_conversion)",
        [
            f"path: native lab, {backend}, shipped ledger, tracing off; loopback",
            f"{args.flips} flips alternating on/off via faults.set_flags; poll: POST a EUR "
            f"payment every {POLL_S * 1000:.0f} ms until the booked currency changes",
            f"(time = write of the state file -> first response showing the new state; "
            f"bound {BOUND_MS:.0f} ms, give-up {TIMEOUT_S:.0f} s)",
        ],
    )
    rng = random.Random(args.seed)
    catalog = faults.load_catalog()
    elapsed_ms: list[float] = []
    polls: list[int] = []
    timeouts = 0
    with (
        running_lab(backend=backend, only=["ledger"]) as lab,
        http_client(lab.ledger_url, timeout=5) as client,
    ):
        faults.reset_flags(lab.state_dir, catalog)
        # Let the service pick up the reset file before the first measured flip.
        time.sleep(0.5)
        for i in range(args.flips):
            variant = "on" if i % 2 == 0 else "off"
            want = EXPECTED_CURRENCY[variant]
            payment = {
                "account_id": f"flip-{i}",
                "direction": "credit",
                "currency": "EUR",
                "amount": "10.00",
            }
            time.sleep(rng.uniform(0, 0.25))
            start = time.perf_counter()
            faults.set_flags(lab.state_dir, catalog, {FLAG: (variant, None)})
            deadline = start + TIMEOUT_S
            seen, count = None, 0
            while time.perf_counter() < deadline:
                count += 1
                response = client.post("/transactions", json=payment)
                response.raise_for_status()
                if response.json()["currency"] == want:
                    seen = time.perf_counter()
                    break
                next_poll = start + count * POLL_S
                time.sleep(max(0.0, next_poll - time.perf_counter()))
            polls.append(count)
            if seen is None:
                timeouts += 1
                elapsed_ms.append(TIMEOUT_S * 1000)
            else:
                elapsed_ms.append((seen - start) * 1000)
        faults.reset_flags(lab.state_dir, catalog)
    print()
    print_table(
        ["flips", "median ms", "p90 ms", "p99 ms", "max ms", "min ms", "polls/flip", "timeouts"],
        [
            [
                len(elapsed_ms),
                median(elapsed_ms),
                percentile(elapsed_ms, 0.90),
                percentile(elapsed_ms, 0.99),
                max(elapsed_ms),
                min(elapsed_ms),
                median([float(p) for p in polls]),
                timeouts,
            ]
        ],
    )
    under = all(ms < BOUND_MS for ms in elapsed_ms)
    print()
    print(f"all {len(elapsed_ms)} flips took effect in under {BOUND_MS:.0f} ms: {under}")
    return 0 if under else 1


if __name__ == "__main__":
    sys.exit(main())
