"""Chain domain metrics: how busy each service's workers are."""

from __future__ import annotations

from prometheus_client import Gauge

WORKERS = Gauge("chain_workers", "Request worker threads the service runs", ["service"])
WORKERS_BUSY = Gauge(
    "chain_workers_busy", "Request worker threads serving a request right now", ["service"]
)
