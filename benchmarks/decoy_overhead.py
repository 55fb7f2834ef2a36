"""What the decoy middleware costs a request, in-process: a bare ASGI app called directly, then
behind services.kit.decoys.DecoyMiddleware with no decoy live (the workshop's usual state),
then with a decoy live on another service (still the fast path: the flag pins another service),
then with a decoy live on this service but another route (each request evaluates the flag
through flagd and misses).

Rough figures on a shared machine, not a test: the point is the order of magnitude.

Run: PYTHONPATH=. .venv/bin/python benchmarks/decoy_overhead.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from faults import (
    PROGRAM,
    Flags,
    decoy_flag,
    load_catalog,
    reset_flags,
    set_layer_flags,
    state_path,
)
from services.kit.decoys import DecoyMiddleware

N = 20_000


async def bare(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def per_request_us(app: Any) -> float:
    scope = {"type": "http", "path": "/items/1", "method": "GET", "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    for _ in range(500):
        await app(dict(scope), receive, send)
    started = time.perf_counter()
    for _ in range(N):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - started) / N * 1e6


def main() -> int:
    catalog = load_catalog()
    with tempfile.TemporaryDirectory() as directory:
        state = Path(directory)
        reset_flags(state, catalog)
        flags = Flags(state_path(state), service="bench", catalog=catalog)
        flags.start()
        try:
            wrapped = DecoyMiddleware(bare, flags=flags, service="bench", retained=[])
            base = asyncio.run(per_request_us(bare))
            off = asyncio.run(per_request_us(wrapped))
            elsewhere = {"service": "other"}
            set_layer_flags(state, catalog, PROGRAM, {decoy_flag("latency"): ("on", 20, elsewhere)})
            time.sleep(0.6)  # the provider polls every 200 ms; nothing becomes live here
            elsewhere_us = asyncio.run(per_request_us(wrapped))
            other_route = {"service": "bench", "route": "/elsewhere"}
            set_layer_flags(
                state, catalog, PROGRAM, {decoy_flag("latency"): ("on", 20, other_route)}
            )
            deadline = time.monotonic() + 3
            while not flags.live_decoys() and time.monotonic() < deadline:
                time.sleep(0.02)
            evaluated_us = asyncio.run(per_request_us(wrapped))
        finally:
            flags.close()
    rows = [
        ("bare app", base),
        ("+ decoy middleware, no decoy live", off - base),
        ("+ decoy middleware, one live on another service", elsewhere_us - base),
        ("+ decoy middleware, one live here, other route", evaluated_us - base),
    ]
    for label, us in rows:
        print(f"{label:<50} {us:8.2f} us/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
