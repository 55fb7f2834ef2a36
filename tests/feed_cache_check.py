"""Exercise the reference fix's profile cache; run inside a patched lab tree (see test_feed_cache).

Not collected by pytest: the patched `services.feed` only exists in a copy of the lab with
solutions/n-plus-one.patch applied, so the test runs this file there, in its own interpreter,
and checks the JSON it prints. The profiles API is the real stub app, reached over ASGI.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY

from services.feed import authors  # exists only in the patched tree
from services.kit.http import create_async_client
from services.profiles.app import create_app as create_profiles
from services.profiles.models import profile_of
from services.profiles.settings import ProfilesSettings


def calls(service: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "http_client_requests_total" and sample.labels["service"] == service:
                total += sample.value
    return total


def lookups(result: str) -> float:
    labels = {"cache": "profiles", "result": result}
    return REGISTRY.get_sample_value("cache_lookups_total", labels) or 0.0


TTL_S = 2.0


async def check(mode: str, redis_url: str | None) -> dict[str, Any]:
    profiles = create_profiles(
        ProfilesSettings(state_dir=Path("/tmp")), tracer_provider=TracerProvider()
    )
    service = f"cache-check-{mode}"
    client = create_async_client(
        service,
        "profiles",
        "http://profiles",
        timeout=httpx.Timeout(2.0),
        tracer_provider=TracerProvider(),
        transport=httpx.ASGITransport(app=profiles),
    )
    prefix = f"drill-test:{uuid.uuid4().hex}:profile:"
    cache: authors.Cache
    if mode == "redis":
        assert redis_url is not None
        cache = authors.RedisCache(redis_url, prefix)
    else:
        cache = authors.MemoryCache()
    # Long enough that nothing expires between the reads on a slow, busy machine (at 0.5 s,
    # 9 of 250 keys had expired by the time they were counted); the expiry is waited out below.
    directory = authors.AuthorDirectory(client, cache, ttl_s=TTL_S, max_batch=100, concurrency=4)
    out: dict[str, Any] = {}
    try:
        with profiles.state.flags.override({"profiles.latency_ms": 100}):
            ids = list(range(1, 21))
            hits_before = lookups("hit")
            results = await asyncio.gather(*(directory.get_many(ids) for _ in range(50)))
            out["stampede_calls"] = calls(service)
            out["stampede_correct"] = all(
                r[i]["display_name"] == profile_of(i).display_name for r in results for i in ids
            )
            await directory.get_many(ids)
            out["calls_after_warm_read"] = calls(service)
            out["hits_on_warm_read"] = lookups("hit") - hits_before
            await directory.get_many(range(1, 251))
            out["calls_after_250_ids"] = calls(service)
            if mode == "redis":
                raw = cache.client  # type: ignore[attr-defined]
                out["redis_keys"] = len([k async for k in raw.scan_iter(match=prefix + "*")])
                out["redis_pttl_ms"] = await raw.pttl(prefix + "1")
            await asyncio.sleep(TTL_S + 0.3)
            await directory.get_many([1])
            out["calls_after_expiry"] = calls(service)
        with profiles.state.flags.override({"profiles.error_rate": 1.0}):
            before = calls(service)
            try:
                await directory.get_many([999])
                out["failure"] = None
            except authors.ProfilesUnavailable as exc:
                out["failure"] = str(exc)
            out["attempts_on_failure"] = calls(service) - before
    finally:
        if mode == "redis":
            raw = cache.client  # type: ignore[attr-defined]
            keys = [k async for k in raw.scan_iter(match=prefix + "*")]
            if keys:
                await raw.delete(*keys)
        await directory.close()
        await client.aclose()
    return out


async def _silent_server() -> tuple[asyncio.Server, int]:
    """A provider that accepts connections and never answers: the worst kind of slow."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _timed_get(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    started = time.perf_counter()
    reply = await client.get(url)
    return {
        "status": reply.status_code,
        "retry_after": reply.headers.get("Retry-After"),
        "seconds": time.perf_counter() - started,
    }


async def gate(state_dir: str) -> dict[str, Any]:
    """Overload the patched feed against a provider that never answers: every timeline ends in
    a 503 with Retry-After, the ones past the in-flight limit at once."""
    from services.feed.app import create_app as create_feed
    from services.feed.settings import FeedSettings

    server, port = await _silent_server()
    settings = FeedSettings(
        state_dir=Path(state_dir),
        profiles_url=f"http://127.0.0.1:{port}",
        max_timelines_in_flight=2,
        cache_warm_authors=0,
        seed_users=1100,
    )
    feed = create_feed(settings, tracer_provider=TracerProvider())
    transport = httpx.ASGITransport(app=feed)
    try:
        async with (
            feed.router.lifespan_context(feed),
            httpx.AsyncClient(transport=transport, base_url="http://feed", timeout=30) as client,
        ):
            first = [asyncio.create_task(_timed_get(client, "/feed/3")) for _ in range(2)]
            await asyncio.sleep(0.3)  # the first two are waiting on the provider by now
            rest = await asyncio.gather(*(_timed_get(client, "/feed/3") for _ in range(6)))
            return {"waited": await asyncio.gather(*first), "refused": rest}
    finally:
        server.close()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "gate":
        print(json.dumps(asyncio.run(gate(sys.argv[2]))))  # noqa: T201
    else:
        redis_url = sys.argv[2] if len(sys.argv) > 2 else None
        print(json.dumps(asyncio.run(check(mode, redis_url))))  # noqa: T201
