"""n-plus-one in three directions, through the real `drill` CLI against native labs on Postgres.

Shipped code with the triggers on must fail `drill verify n-plus-one`, with p95 at least 10x
the fixed code's; the reference fix must pass with the triggers still on (its cache in Redis);
the shipped code with every trigger off must pass (the clean baseline).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from drill.solutions import copy_lab
from tests.conftest import REPO_ROOT, need_server
from tests.labs import check_results, drop_database, explain, fresh_database, lab_env, run_drill
from tests.labs import verify as run_verify
from tests.test_feed_cache import REDIS_URL, redis_reachable

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# The shipped run stalls: 20 s of load is plenty to fail, and its queue drains after it.
SHIPPED_SECONDS = "20"
# 30 s: 25 s judged after the scenario's 5 s warm-up, 200+ timeline reads.
PATCHED_SECONDS = "30"
FEED_REQUEST = "GET /feed/{user_id}"


@pytest.fixture(scope="module")
def results(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[dict[str, tuple[int, dict]]]:
    """Each direction's exit code and result JSON, run once for the module's tests."""
    if not redis_reachable():
        need_server(f"Redis at {REDIS_URL}", "redis-server --daemonize yes")
    tmp = tmp_path_factory.mktemp("n-plus-one")
    databases: list[str] = []

    def run(name: str, patch: str | None, redis: bool, *args: str) -> tuple[int, dict]:
        root = copy_lab(REPO_ROOT, tmp / name, solution=patch)
        database = f"{postgres_url.rsplit('/', 1)[1]}_n1_{name}"
        databases.append(database)
        env = lab_env(
            root, database_url=fresh_database(database), redis_url=REDIS_URL if redis else None
        )
        try:
            up = run_drill(root, env, "up", "--native", "--only", "feed", "--only", "profiles")
            assert up.returncode == 0, up.stderr + up.stdout
            return run_verify(root, env, "n-plus-one", *args)
        finally:
            run_drill(root, env, "down")

    try:
        yield {
            "shipped": run("shipped", None, False, "--duration", SHIPPED_SECONDS),
            "patched": run("patched", "n-plus-one", True, "--duration", PATCHED_SECONDS),
            "baseline": run("baseline", None, False, "--duration", PATCHED_SECONDS, "--baseline"),
        }
    finally:
        for database in databases:
            drop_database(database)


def test_shipped_code_with_triggers_fails(results: dict[str, tuple[int, dict]]) -> None:
    """Shipped feed + triggers: p95 and statements per request miss their SLAs; exit 1."""
    code, result = results["shipped"]
    figures = result["figures"]
    assert code == 1, explain(result)
    # Only requests that finished are samples; a stalled feed finishes few, but some.
    assert figures["requests"] >= 5
    assert not check_results(result)["p95_ms"]
    assert not check_results(result)["feed.db_queries_per_request_max"]
    assert figures["feed.db_queries_per_request_max"] > 100
    assert figures["feed.external_calls_per_request_mean"] >= 5
    # The blocking calls stall the event loop for whole requests at a time.
    assert figures["feed.event_loop_lag_max_ms"] >= 1000


def test_reference_fix_passes_with_triggers_on(results: dict[str, tuple[int, dict]]) -> None:
    """solutions/n-plus-one.patch: every SLA holds with the triggers still on; p95 10x lower."""
    code, result = results["patched"]
    figures = result["figures"]
    assert code == 0, explain(result)
    assert figures["feed.db_queries_per_request_max"] <= 3
    assert figures["p95_ms"] <= 150
    assert figures["success_ratio"] >= 0.99
    assert figures["requests"] >= 120  # 50 readers, about 6.7 reads/s, for 25 judged seconds
    assert figures["feed.external_calls_per_request_mean"] < 1, "the cache answers most reads"
    assert figures["feed.event_loop_lag_max_ms"] <= 100
    shipped_p95 = results["shipped"][1]["figures"]["p95_ms"]
    assert shipped_p95 >= 10 * figures["p95_ms"], (shipped_p95, figures["p95_ms"])


def test_shipped_code_passes_the_clean_baseline(results: dict[str, tuple[int, dict]]) -> None:
    """Shipped feed with every trigger off looks healthy: 'fine in staging'."""
    code, result = results["baseline"]
    assert code == 0, explain(result)
    assert result["baseline"] is True
    assert "feed.db_queries_per_request_max" not in check_results(result), "a check of the fix"
    assert result["figures"]["feed.db_queries_per_request_max"] > 3, "the N+1 is there all along"
