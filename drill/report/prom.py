"""Prometheus range queries for the report: the drills' metrics over the report's window.

The queries use the metric names the dashboards use (grafana/dashboards/*.json). Rates are
taken over 30 s rather than the dashboards' minute: a verify run is tens of seconds, and the
report wants to see its edges.
"""

from __future__ import annotations

import math
import os
from typing import Any

import httpx

from drill import native
from drill.evidence import range_query_params
from drill.report.model import Answer, Restart, Series, Window, from_epoch

# Prometheus answers at most 11,000 points per series; 5 s is the lab's scrape interval.
SCRAPE_S = 5.0
MAX_POINTS = 10_000
# A served balance matches the exact recount "to the cent" when it is off by less than half a
# cent (both are whole cents, so in practice: equal). Floats land within 1e-9 of a cent.
CENT = 0.005
_DIFF = "ledger_reconciliation_difference"
_ORDERS_OK = 'http_server_requests_total{service="chain-a", route="/orders", status=~"2.."}'
_TIMELINE = 'service="feed", route="/feed/{user_id}"'
LAB_JOBS = "ledger|chain-a|chain-b|chain-c|feed|profiles"

QUERIES: dict[str, str] = {
    # Ledger: served balances and the auditor's exact recount (served minus difference).
    "ledger.served": "sum by (currency) (ledger_balance)",
    "ledger.recount": f"sum by (currency) (ledger_balance - {_DIFF})",
    "ledger.gap": f"max(abs({_DIFF}))",
    "ledger.accuracy": (
        f"(count(abs({_DIFF}) < {CENT}) or on() (count({_DIFF}) * 0)) / count({_DIFF})"
    ),
    "ledger.accounts": f"count({_DIFF})",
    "ledger.duplicates": "sum(ledger_duplicate_postings)",
    # Chain: orders completed per second (0 while orders arrive but none completes) and waiting.
    "chain.completed": (
        f"sum(rate({_ORDERS_OK}[30s])) "
        'or on() (sum(rate(http_server_requests_total{service="chain-a"}[30s])) * 0)'
    ),
    "chain.waiting": 'sum(http_server_requests_in_flight{service="chain-a"})',
    "chain.p99": (
        "histogram_quantile(0.99, sum by (le) (rate(http_server_request_duration_seconds_bucket"
        '{service="chain-a", route="/orders"}[30s])))'
    ),
    # Feed: timeline latency and the work per timeline.
    "feed.p95": (
        "histogram_quantile(0.95, sum by (le) (rate(http_server_request_duration_seconds_bucket"
        f"{{{_TIMELINE}}}[1m])))"
    ),
    "feed.statements": (
        f"sum(rate(db_queries_per_request_sum{{{_TIMELINE}}}[1m])) "
        f"/ (sum(rate(db_queries_per_request_count{{{_TIMELINE}}}[1m])) > 0)"
    ),
    "feed.calls": (
        f"sum(rate(http_client_calls_per_request_sum{{{_TIMELINE}}}[1m])) "
        f"/ (sum(rate(http_client_calls_per_request_count{{{_TIMELINE}}}[1m])) > 0)"
    ),
    # Every (re)start of a lab service in the window: the deploy candidates.
    "restarts": f'process_start_time_seconds{{job=~"{LAB_JOBS}"}}',
}


def prometheus_url(config: native.LabConfig) -> str:
    """The lab's Prometheus: DRILL_PROMETHEUS_URL, else its port in this lab (plus offset)."""
    override = os.environ.get("DRILL_PROMETHEUS_URL")
    return override.rstrip("/") if override else config.url(native.PROMETHEUS)


def step_for(window: Window) -> float:
    """The scrape interval, or coarser when the window would need too many points."""
    return max(SCRAPE_S, math.ceil(window.seconds / MAX_POINTS))


def parse_matrix(query: str, body: Any) -> Answer:
    """An Answer from a /api/v1/query_range response body (the API's JSON, decoded)."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        kind = body.get("errorType") if isinstance(body, dict) else None
        return Answer(query, error=f"{kind or 'error'}: {error or body!r}")
    data = body.get("data") or {}
    if data.get("resultType") != "matrix":
        return Answer(query, error=f"expected a matrix, got {data.get('resultType')!r}")
    series = []
    for item in data.get("result") or []:
        values = item.get("values") or []
        series.append(
            Series(
                labels={str(k): str(v) for k, v in (item.get("metric") or {}).items()},
                times=tuple(float(t) for t, _ in values),
                values=tuple(float(v) for _, v in values),
            )
        )
    return Answer(query, tuple(series))


def query_range(client: httpx.Client, query: str, window: Window, step: float) -> Answer:
    params = range_query_params(query, window.start, window.end, step)
    try:
        response = client.post("/api/v1/query_range", data=params)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return Answer(query, error=f"{type(exc).__name__}: {exc}")
    return parse_matrix(query, body)


def gather(url: str, window: Window) -> tuple[str | None, dict[str, Answer]]:
    """(why Prometheus could not be read, or None; an Answer per QUERIES name)."""
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
        try:
            ready = client.get("/-/ready", timeout=3)
        except httpx.HTTPError as exc:
            return f"Prometheus at {url} is not reachable ({type(exc).__name__})", {}
        if ready.status_code != 200:
            return f"Prometheus at {url} is not ready (HTTP {ready.status_code})", {}
        step = step_for(window)
        return None, {name: query_range(client, q, window, step) for name, q in QUERIES.items()}


def restarts(answer: Answer | None, window: Window) -> list[Restart]:
    """Each process start of a lab service within the window, from process_start_time_seconds."""
    found: dict[tuple[str, int], Restart] = {}
    for series in answer.series if answer is not None else ():
        service = series.labels.get("job", "?")
        for _, value in series.finite():
            when = from_epoch(value)
            if window.holds(when):
                found.setdefault((service, round(value)), Restart(service, when, "prometheus"))
    return sorted(found.values(), key=lambda r: r.at)
