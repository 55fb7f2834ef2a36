"""The profiles stub: deterministic profiles, a batch endpoint, and its knobs."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider

from services.profiles.app import create_app
from services.profiles.models import REVISION_PERIOD_S, profile_of, revision_at
from services.profiles.settings import ProfilesSettings


def make_app(tmp_path: Path, **settings: float):  # type: ignore[no-untyped-def]
    return create_app(
        ProfilesSettings(state_dir=tmp_path, **settings), tracer_provider=TracerProvider()
    )


def test_a_profile_is_the_same_for_the_same_id(tmp_path: Path) -> None:
    """GET /profiles/{id} answers the id's current profile; ids outside the API's range are 422."""
    with TestClient(make_app(tmp_path)) as client:
        before = time.time()
        reply = client.get("/profiles/42")
        after = time.time()
        assert reply.status_code == 200
        current = [profile_of(42, at).model_dump(mode="json") for at in (before, after)]
        assert reply.json() in current
        assert profile_of(42, before) != profile_of(43, before)
        for bad in ("0", "-1", "abc", "99999999999"):
            assert client.get(f"/profiles/{bad}").status_code == 422


def test_profiles_take_a_new_revision_every_period() -> None:
    """Each account's profile changes once a period, at its own phase, and says since when."""
    at = 1_800_000_000.0
    changed_at = set()
    for profile_id in range(1, 50):
        now, later = profile_of(profile_id, at), profile_of(profile_id, at + REVISION_PERIOD_S)
        assert now.avatar_url != later.avatar_url
        assert now.display_name == later.display_name
        started = now.updated_at.timestamp()
        assert started <= at < started + REVISION_PERIOD_S
        assert revision_at(profile_id, started) == revision_at(profile_id, at)
        assert revision_at(profile_id, started - 0.01) == revision_at(profile_id, at) - 1
        changed_at.add(round(started))
    assert len(changed_at) > 10, "accounts edit at phases of their own, not all at once"


def test_batch_answers_in_order_without_duplicates_and_refuses_oversize(tmp_path: Path) -> None:
    """GET /profiles?ids= returns each id once in order; more than max_batch ids is a clear 422."""
    with TestClient(make_app(tmp_path, max_batch=3)) as client:
        reply = client.get("/profiles", params={"ids": "7,3,7,5"})
        assert [p["id"] for p in reply.json()["data"]] == [7, 3, 5]
        too_many = client.get("/profiles", params={"ids": "1,2,3,4"})
        assert too_many.status_code == 422
        assert too_many.json()["detail"] == "at most 3 ids per call, got 4"
        for bad in ("", "1,,2", "1;2", "a,b", "-1"):
            assert client.get("/profiles", params={"ids": bad}).status_code == 422


def test_error_rate_answers_429_with_retry_after_or_503(tmp_path: Path) -> None:
    """profiles.error_rate at 1.0 fails every call, half 429 with Retry-After, half 503."""
    app = make_app(tmp_path)
    with TestClient(app) as client, app.state.flags.override({"profiles.error_rate": 1.0}):
        replies = [client.get("/profiles/1") for _ in range(60)]
    statuses = {r.status_code for r in replies}
    assert statuses == {429, 503}
    assert all(r.headers["Retry-After"] == "1" for r in replies if r.status_code == 429)


def test_rate_limit_turns_away_calls_past_the_burst(tmp_path: Path) -> None:
    """Past the token bucket's burst, calls get 429 with a Retry-After until tokens refill."""
    with TestClient(make_app(tmp_path, rate_limit_rps=2, rate_limit_burst=3)) as client:
        statuses = [client.get("/profiles/1").status_code for _ in range(5)]
        assert statuses[:3] == [200, 200, 200]
        limited = client.get("/profiles/1")
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
        time.sleep(0.6)
        assert client.get("/profiles/1").status_code == 200


@pytest.mark.anyio
async def test_latency_is_slept_asynchronously(tmp_path: Path) -> None:
    """profiles.latency_ms delays each call by about its median, and 20 calls overlap."""
    app = make_app(tmp_path)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://profiles") as client:
        with app.state.flags.override({"profiles.latency_ms": 200}):
            started = time.perf_counter()
            single = await client.get("/profiles/1")
            one = time.perf_counter() - started
            started = time.perf_counter()
            async with anyio.create_task_group() as group:
                for i in range(20):
                    group.start_soon(client.get, f"/profiles/{i + 1}")
            twenty = time.perf_counter() - started
    assert single.status_code == 200
    assert one > 0.1
    # Overlapping, twenty calls take about as long as the slowest of them; one after the other
    # they would take some twenty times one. A ratio, so a slow machine cannot tip it.
    assert twenty < 8 * one, "the stub must not serialise its own latency"
