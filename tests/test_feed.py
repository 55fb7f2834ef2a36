"""The feed as shipped: timelines over the seeded graph, bad input, and the seed's shape."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from services.feed.app import create_app
from services.feed.models import Follow, Post, User
from services.feed.seed import ANCHORS, generate
from services.feed.settings import FeedSettings
from services.kit.admin import DIGEST_FILE, write_token_digest
from services.profiles.app import create_app as create_profiles
from services.profiles.models import profile_of
from services.profiles.settings import ProfilesSettings

ROUTE = "/feed/{user_id}"
TOKEN = "instructor-token-for-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def profiles_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real profiles server on a free port, in a thread of this process."""
    settings = ProfilesSettings(state_dir=tmp_path_factory.mktemp("profiles"))
    app = create_profiles(settings, tracer_provider=TracerProvider())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "profiles server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, profiles_url: str
) -> Iterator[TestClient]:
    database_url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    settings = FeedSettings(
        state_dir=tmp_path_factory.mktemp("feed"),
        database_url=database_url,
        profiles_url=profiles_url,
    )
    write_token_digest(settings.state_dir / DIGEST_FILE, TOKEN)
    with TestClient(create_app(settings, tracer_provider=TracerProvider())) as test_client:
        yield test_client


def queries_per_request() -> tuple[float, float]:
    """(count, sum) of the feed's statements-per-request histogram for the timeline route."""
    labels = {"service": "feed", "route": ROUTE}
    count = REGISTRY.get_sample_value("db_queries_per_request_count", labels) or 0.0
    total = REGISTRY.get_sample_value("db_queries_per_request_sum", labels) or 0.0
    return count, total


def followees(client: TestClient, user_id: int) -> set[int]:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        rows = session.scalars(select(Follow.followee_id).where(Follow.follower_id == user_id))
        return set(rows)


def test_the_lab_seeds_itself_on_first_start(client: TestClient) -> None:
    """An empty database gets the default seed: the same rows generate(7, 2000) describes."""
    data = generate(7, 2000)
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        assert session.scalar(select(func.count()).select_from(User)) == 2000
        assert session.scalar(select(func.count()).select_from(Follow)) == len(data.follows)
        assert session.scalar(select(func.count()).select_from(Post)) == len(data.posts)


def test_timeline_is_newest_first_from_followees_with_profiles(client: TestClient) -> None:
    """GET /feed/{id}: at most `limit` posts, newest first, by followees, with their profiles."""
    reply = client.get("/feed/3")
    assert reply.status_code == 200
    body = reply.json()
    assert body["user_id"] == 3
    posts = body["posts"]
    assert 0 < len(posts) <= 10
    assert [p["posted_at"] for p in posts] == sorted((p["posted_at"] for p in posts), reverse=True)
    assert {p["author_id"] for p in posts} <= followees(client, 3)
    for post in posts:
        profile = profile_of(post["author_id"])
        assert post["author"]["display_name"] == profile.display_name
        assert post["author"]["handle"] == f"user{post['author_id']}"
    assert len(client.get("/feed/3", params={"limit": 3}).json()["posts"]) == 3


def test_statements_per_request_grow_with_followees(client: TestClient) -> None:
    """The metric shows it: a reader of 1,000 accounts costs ~100x the statements of one of 10."""
    costs = {}
    for user_id in (3, 1):
        count, total = queries_per_request()
        assert client.get(f"/feed/{user_id}").status_code == 200
        after_count, after_total = queries_per_request()
        assert after_count == count + 1
        costs[user_id] = after_total - total
    assert costs[3] >= 10
    assert costs[1] >= 1000


def test_db_latency_flag_slows_every_statement(client: TestClient) -> None:
    """feed.db_latency_ms adds its delay to each statement a timeline sends."""
    flags = client.app.state.flags  # type: ignore[attr-defined]
    _, total = queries_per_request()
    with flags.override({"feed.db_latency_ms": 20}):
        started = time.perf_counter()
        assert client.get("/feed/3").status_code == 200
        slow = time.perf_counter() - started
    statements = queries_per_request()[1] - total
    # At least 1 + 1 + 10 followees + the page's posts statements; each waited 20 ms first.
    # A lower bound only: the sleeps guarantee it, so a busy machine cannot break it, while
    # without the delay a timeline takes a fraction of it.
    assert statements >= 12
    assert slow >= statements * 0.020


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/feed/999999", 404, "user 999999 does not exist"),
        ("/feed/0", 422, "greater than or equal to 1"),
        ("/feed/-5", 422, "greater than or equal to 1"),
        ("/feed/abc", 422, "valid integer"),
        ("/feed/1e3", 422, "valid integer"),
        ("/feed/99999999999999999999", 422, "less than or equal to 2147483647"),
        ("/feed/3?limit=-1", 422, "greater than or equal to 1"),
        ("/feed/3?limit=0", 422, "greater than or equal to 1"),
        ("/feed/3?limit=1000000", 422, "less than or equal to 100"),
        ("/feed/3?limit=ten", 422, "valid integer"),
        ("/users?limit=100000", 422, "less than or equal to 5000"),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_changes_nothing(
    client: TestClient, path: str, status: int, message: str
) -> None:
    """Unknown users are 404; malformed ids and limits are 422 naming the rule; nothing stored."""
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        users = session.scalar(select(func.count()).select_from(User))
    reply = client.get(path)
    assert reply.status_code == status
    assert message in reply.text
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        assert session.scalar(select(func.count()).select_from(User)) == users
    assert client.get("/feed/3").status_code == 200


def test_user_directory_pages_with_followee_counts(client: TestClient) -> None:
    """GET /users lists users by id with how many accounts each follows, page by page."""
    first = client.get("/users", params={"limit": 3}).json()
    assert first["data"] == [
        {"id": 1, "handle": "user1", "following": 1000},
        {"id": 2, "handle": "user2", "following": 100},
        {"id": 3, "handle": "user3", "following": 10},
    ]
    second = client.get("/users", params={"limit": 3, "after": first["next_after"]}).json()
    assert [u["id"] for u in second["data"]] == [4, 5, 6]
    assert client.get("/users", params={"after": 1999}).json()["next_after"] is None


def reseed(client: TestClient, seed: int, users: int) -> dict:
    """POST /admin/seed as the instructor, then poll its job until it is done: the job."""
    started = client.post("/admin/seed", json={"seed": seed, "users": users}, headers=ADMIN)
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    assert location == f"/admin/seed/{started.json()['id']}"
    deadline = time.monotonic() + 60
    while (job := client.get(location, headers=ADMIN).json())["status"] == "running":
        assert time.monotonic() < deadline, "the reseed never finished"
        time.sleep(0.05)
    return job


def test_reseed_replaces_the_data_deterministically(client: TestClient) -> None:
    """POST /admin/seed with another seed number gives that seed's rows; back to 7 restores."""
    other = generate(8, 1500)
    job = reseed(client, 8, 1500)
    assert job["status"] == "done"
    assert job["result"] == {
        "seed": 8,
        "users": 1500,
        "follows": len(other.follows),
        "posts": len(other.posts),
    }
    assert followees(client, 4) == {
        e["followee_id"] for e in other.follows if e["follower_id"] == 4
    }
    refused = client.post("/admin/seed", json={"seed": 8, "users": 10}, headers=ADMIN)
    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        {"pointer": "/users", "detail": "Input should be greater than or equal to 1100"}
    ]
    assert reseed(client, 7, 2000)["status"] == "done"
    assert len(followees(client, 1)) == 1000


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({}, "need the instructor's token"),
        ({"Authorization": "Bearer not-the-token"}, "not the instructor's token"),
        ({"Authorization": f"Basic {TOKEN}"}, "need the instructor's token"),
    ],
)
def test_admin_routes_refuse_without_the_instructor_token(
    client: TestClient, headers: dict[str, str], says: str
) -> None:
    """No token, a wrong one or another scheme: 401 problem details, and the data stays."""
    before = followees(client, 1)
    for method, path in (("POST", "/admin/seed"), ("GET", "/admin/seed/0123456789abcdef")):
        reply = client.request(method, path, json={"seed": 9, "users": 1100}, headers=headers)
        assert reply.status_code == 401
        assert reply.headers["content-type"] == "application/problem+json"
        assert reply.headers["www-authenticate"] == "Bearer"
        assert says in reply.json()["detail"]
    assert followees(client, 1) == before


def test_admin_routes_fail_closed_without_a_published_digest(tmp_path: Path) -> None:
    """A lab whose instructor token was never made refuses every token."""
    settings = FeedSettings(state_dir=tmp_path, profiles_url="http://127.0.0.1:9")
    with TestClient(create_app(settings, tracer_provider=TracerProvider())) as fresh:
        reply = fresh.post("/admin/seed", json={}, headers=ADMIN)
    assert reply.status_code == 401
    assert "no instructor token yet" in reply.json()["detail"]


def test_a_second_reseed_while_one_runs_is_a_conflict(client: TestClient) -> None:
    """One reseed at a time: the second answers 409 until the first is done."""
    first = client.post("/admin/seed", json={"seed": 7, "users": 2000}, headers=ADMIN)
    second = client.post("/admin/seed", json={"seed": 7, "users": 2000}, headers=ADMIN)
    assert (first.status_code, second.status_code) == (202, 409)
    assert "still running" in second.json()["detail"]
    deadline = time.monotonic() + 60
    while client.get(first.headers["location"], headers=ADMIN).json()["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get("/admin/seed/ffffffffffffffff", headers=ADMIN).status_code == 404


def test_timestamps_carry_their_utc_offset(client: TestClient) -> None:
    """posted_at and updated_at are RFC 3339 date-times with an offset, not naive ones."""
    post = client.get("/feed/3").json()["posts"][0]
    assert post["posted_at"].endswith("Z") or post["posted_at"].endswith("+00:00")
    assert post["author"]["updated_at"].endswith(("Z", "+00:00"))


def test_seed_is_deterministic() -> None:
    """The same seed number gives the same rows; another number gives another graph."""
    assert generate(7, 1200) == generate(7, 1200)
    assert generate(7, 1200).follows != generate(8, 1200).follows


def test_seed_follow_graph_is_power_law() -> None:
    """Most users follow a handful of accounts, a few follow 1,000+; the anchors are exact."""
    data = generate(7, 2000)
    following = data.following()
    for user_id, count in ANCHORS.items():
        assert following[user_id] == count
    counts = sorted(following.values())
    assert statistics.median(counts) <= 5
    assert sum(c >= 1000 for c in counts) >= 3
    assert 10 <= sum(c >= 100 for c in counts) <= 60
    # The top 1% of followers hold a large share of all follow edges.
    assert sum(counts[-20:]) > 0.3 * sum(counts)
    edges = [(e["follower_id"], e["followee_id"]) for e in data.follows]
    assert len(set(edges)) == len(edges)
    assert all(a != b for a, b in edges)


def test_a_timeline_trace_is_a_ladder_of_statements_and_calls(
    tmp_path: Path, profiles_url: str
) -> None:
    """One timeline's trace holds a span per statement and a span per profile call, in order."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = FeedSettings(state_dir=tmp_path, profiles_url=profiles_url)
    with TestClient(create_app(settings, tracer_provider=provider)) as client:
        exporter.clear()
        reply = client.get("/feed/3")
    assert reply.status_code == 200
    trace_id = reply.headers["x-trace-id"]
    spans = [
        s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id
    ]
    statements = [s for s in spans if s.attributes and "db.statement" in s.attributes]
    calls = [s for s in spans if s.kind is SpanKind.CLIENT and s.name.startswith("GET")]
    assert len(statements) >= 12
    assert len(calls) == len(reply.json()["posts"]) == 10
    # One after the other: each call starts after the previous one ended.
    calls.sort(key=lambda s: s.start_time or 0)
    assert all(
        (a.end_time or 0) <= (b.start_time or 0) for a, b in zip(calls, calls[1:], strict=False)
    )
