"""The seed's "queries per user -> latency impact" table, shipped vs patched, and loop lag.

For readers who follow 10, 100 and 1,000 accounts (seed users 3, 2 and 1), with the profiles
API at 100 ms median latency (`profiles.latency_ms` = slow), one reader at a time:
statements per request (from the feed's own db_queries_per_request histogram), outgoing calls
per request, and p50/p95 latency over REQUESTS sequential reads. The patched code's first read
of a reader is a cache miss; the rest hit, which is what the cache is for.

Then event-loop lag under load: LOAD_CLIENTS closed-loop clients read typical timelines (readers
who follow at most 20 accounts) for LOAD_SECONDS, and the feed's event_loop_lag_seconds
histogram is read before and after. Lag is how late a 100 ms timer fired: the time any request
on that loop waited for its turn.

Each code version runs in its own copy of the lab (Postgres when it answers, else SQLite).
Run: .venv/bin/python benchmarks/feed_queries.py
"""

from __future__ import annotations

import math
import random
import threading
import time
from typing import Any

import httpx
from _lab import backend_note, header, http_client, percentile, print_table, running_lab
from prometheus_client.parser import text_string_to_metric_families

from drill import native
from faults import load_catalog, set_flags

READERS = ((3, 10), (2, 100), (1, 1000))
REQUESTS = 20
LOAD_CLIENTS = 25
LOAD_SECONDS = 15.0
ROUTE = "/feed/{user_id}"


def histogram(
    client: httpx.Client, name: str, labels: dict[str, str], text: str | None = None
) -> dict[str, Any]:
    """Cumulative buckets, sum and count of one labelled histogram from /metrics."""
    found: dict[str, Any] = {"buckets": {}, "sum": 0.0, "count": 0.0}
    text = text if text is not None else scrape(client)
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            if sample.name.endswith("_bucket"):
                found["buckets"][float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                found["sum"] = sample.value
            elif sample.name.endswith("_count"):
                found["count"] = sample.value
    return found


def scrape(client: httpx.Client) -> str:
    # A request's counts are observed just after its response is sent: let the last one land.
    time.sleep(0.2)
    return client.get("/metrics", timeout=300).text


def bucket_quantile(before: dict[str, Any], after: dict[str, Any], q: float) -> float:
    """Upper bound of the bucket holding the q-quantile of the observations in between."""
    total = after["count"] - before["count"]
    if total <= 0:
        return math.nan
    for le in sorted(after["buckets"]):
        if after["buckets"][le] - before["buckets"].get(le, 0.0) >= q * total:
            return le
    return math.inf


def per_reader(client: httpx.Client) -> list[tuple[int, float, float, float, float]]:
    rows = []
    for user_id, following in READERS:
        text = scrape(client)
        db_before = histogram(client, "db_queries_per_request", {"route": ROUTE}, text)
        calls_before = histogram(client, "http_client_calls_per_request", {"route": ROUTE}, text)
        times = []
        for _ in range(REQUESTS):
            started = time.perf_counter()
            response = client.get(f"/feed/{user_id}")
            times.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
        text = scrape(client)
        db_after = histogram(client, "db_queries_per_request", {"route": ROUTE}, text)
        calls_after = histogram(client, "http_client_calls_per_request", {"route": ROUTE}, text)
        count = db_after["count"] - db_before["count"]
        assert count == REQUESTS, f"{count} timeline observations for {REQUESTS} reads"
        rows.append(
            (
                following,
                (db_after["sum"] - db_before["sum"]) / count,
                (calls_after["sum"] - calls_before["sum"]) / count,
                percentile(times, 0.50),
                percentile(times, 0.95),
            )
        )
    return rows


def under_load(url: str, client: httpx.Client) -> tuple[float, float, float, float, float, int]:
    """(lag mean ms, lag p95 bucket ms, lag max bucket ms, p50 ms, p95 ms, requests)."""
    typical = [
        u["id"] for u in client.get("/users", params={"limit": 5000}).json()["data"]
        if u["following"] <= 20
    ]  # fmt: skip
    lag_before = histogram(client, "event_loop_lag_seconds", {"service": "feed"})
    times: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + LOAD_SECONDS

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        with http_client(url, timeout=120) as own:
            while time.monotonic() < stop:
                started = time.perf_counter()
                own.get(f"/feed/{rng.choice(typical)}")
                with lock:
                    times.append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lag_after = histogram(client, "event_loop_lag_seconds", {"service": "feed"})
    ticks = lag_after["count"] - lag_before["count"]
    mean = 1000 * (lag_after["sum"] - lag_before["sum"]) / ticks if ticks else math.nan
    return (
        mean,
        1000 * bucket_quantile(lag_before, lag_after, 0.95),
        1000 * bucket_quantile(lag_before, lag_after, 1.0),
        percentile(times, 0.50),
        percentile(times, 0.95),
        len(times),
    )


def main() -> None:
    backend = backend_note()
    header(
        "feed: statements per request and latency, by followees (profiles at 100 ms median)",
        [
            f"backend: {backend}; {REQUESTS} sequential reads per reader; "
            f"lag under load: {LOAD_CLIENTS} closed-loop clients for {LOAD_SECONDS:g} s",
        ],
    )
    table: list[list[object]] = []
    load_rows: list[list[object]] = []
    for solution in (None, "n-plus-one"):
        with running_lab(solution, backend=backend, only=["feed", "profiles"]) as lab:
            url = lab.config.url(native.SERVICES["feed"])
            set_flags(lab.state_dir, load_catalog(), {"profiles.latency_ms": ("slow", None)})
            time.sleep(1.0)
            with http_client(url, timeout=300) as client:
                for following, queries, calls, p50, p95 in per_reader(client):
                    table.append([lab.label, following, queries, calls, p50, p95])
                mean, lag95, lag_max, p50, p95, count = under_load(url, client)
                load_rows.append([lab.label, count, p50, p95, mean, lag95, lag_max])
    print_table(["code", "followees", "queries/req", "calls/req", "p50 ms", "p95 ms"], table)
    print()
    print_table(
        ["code", "requests", "p50 ms", "p95 ms", "lag mean ms", "lag p95 <= ms", "lag max <= ms"],
        load_rows,
    )
    print()
    print("lag p95/max are histogram bucket upper bounds (le); the mean is exact.")


if __name__ == "__main__":
    main()
