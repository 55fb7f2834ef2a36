"""n-plus-one's judge: work per timeline, and what the readers were shown."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from drill import compose
from drill.collectors.truth import read_truth
from drill.native import LabConfig

# The provider's published rule for how profiles change: the judge recomputes it.
from services.profiles.models import profile_revision, revision_at

FEED_ROUTE = "/feed/{user_id}"
# The service's own histograms, as (metric, labels); read before and after the load.
_FEED_HISTOGRAMS = {
    "db": ("db_queries_per_request", {"service": "feed", "route": FEED_ROUTE}),
    "calls": ("http_client_calls_per_request", {"service": "feed", "route": FEED_ROUTE}),
    "lag": ("event_loop_lag_seconds", {"service": "feed"}),
}
Buckets = dict[float, float]


def _histograms(base_url: str) -> dict[str, dict[str, Any]]:
    """Cumulative bucket counts and sums of the feed's work histograms, from /metrics."""
    # Generous: a service whose event loop is stalled answers once it has worked off its queue.
    response = httpx.get(f"{base_url}/metrics", timeout=180, trust_env=False)
    response.raise_for_status()
    found: dict[str, dict[str, Any]] = {
        key: {"buckets": {}, "sum": 0.0} for key in _FEED_HISTOGRAMS
    }
    for family in text_string_to_metric_families(response.text):
        for key, (name, labels) in _FEED_HISTOGRAMS.items():
            if family.name != name:
                continue
            for sample in family.samples:
                if any(sample.labels.get(k) != v for k, v in labels.items()):
                    continue
                if sample.name == f"{name}_bucket":
                    found[key]["buckets"][float(sample.labels["le"])] = sample.value
                elif sample.name == f"{name}_sum":
                    found[key]["sum"] = sample.value
    return found


def _delta(after: dict[str, Any], before: dict[str, Any]) -> tuple[Buckets, float, float]:
    buckets = {le: n - before["buckets"].get(le, 0.0) for le, n in after["buckets"].items()}
    count = buckets.get(math.inf, 0.0)
    return buckets, count, after["sum"] - before["sum"]


def _highest_bound(buckets: Buckets) -> float:
    """The upper bound of the highest bucket any observation fell in (exact for 0..5)."""
    previous, highest = 0.0, math.nan
    for le in sorted(buckets):
        if buckets[le] > previous:
            highest = le
        previous = buckets[le]
    return highest


def snapshot_feed(base_url: str, run_dir: Path) -> None:
    """The feed's work histograms before the load, so the figures cover this run only."""
    (run_dir / "feed-before.json").write_text(json.dumps(_histograms(base_url), default=str))


# How old an author shown on a timeline may be, in seconds past the moment the provider's
# profile changed: the product's rule in the n-plus-one summary (scenarios.yaml). It is shorter
# than the provider's period (REVISION_PERIOD_S), so authors that are never refreshed show stale
# within one 30 s run.
PROFILE_STALENESS_S = 20.0
# Timeline reads checked against the database and the provider: all of a normal run's reads.
MAX_READS_CHECKED = 2000
PAGE_SIZE = 10
_PAGE_SQL = text(
    "SELECT p.id, p.author_id FROM feed_posts p"
    " JOIN feed_follows f ON f.followee_id = p.author_id"
    " WHERE f.follower_id = :user_id"
    " ORDER BY p.posted_at DESC, p.id DESC LIMIT :limit"
)
_AVATAR_REVISION = re.compile(r"/(\d+)\.png$")
log = logging.getLogger("drill.collectors")


def feed_database_url(state_dir: Path) -> str | None:
    """The lab's feed database as the judge reads it: the environment's, else the native
    lab's SQLite file. (Compose keeps Postgres internal: set DRILL_FEED_DATABASE_URL to a
    published port to judge a compose lab's posts.)"""
    url = os.environ.get("DRILL_FEED_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url
    sqlite = state_dir / "feed.db"
    return f"sqlite:///{sqlite.resolve()}" if sqlite.exists() else None


def expected_pages(url: str, user_ids: set[int]) -> dict[int, list[tuple[int, int]]]:
    """Each reader's first page as (post id, author id), newest first, from a direct query."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                uid: [(row[0], row[1]) for row in conn.execute(
                    _PAGE_SQL, {"user_id": uid, "limit": PAGE_SIZE}
                )]
                for uid in sorted(user_ids)
            }  # fmt: skip
    finally:
        engine.dispose()


def _timestamp(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _same_profile(author: dict[str, Any], author_id: int, revision: int) -> bool:
    expected = profile_revision(author_id, revision)
    served_at = _timestamp(author.get("updated_at"))
    return (
        author.get("display_name") == expected.display_name
        and author.get("avatar_url") == expected.avatar_url
        and author.get("verified") == expected.verified
        and served_at is not None
        and abs(served_at - expected.updated_at.timestamp()) < 0.001
    )


def judge_author(author: Any, author_id: int, started: float, finished: float) -> str:
    """ok, missing, wrong or stale: the author shown against the provider's profile then."""
    if not isinstance(author, dict) or not all(
        author.get(key) for key in ("display_name", "avatar_url", "updated_at")
    ):
        return "missing"
    if author.get("id") != author_id:
        return "wrong"
    newest = revision_at(author_id, finished)
    oldest_allowed = revision_at(author_id, started - PROFILE_STALENESS_S)
    if any(_same_profile(author, author_id, r) for r in range(oldest_allowed, newest + 1)):
        return "ok"
    # An older revision, if the avatar names one and everything else matches it exactly.
    match = _AVATAR_REVISION.search(str(author.get("avatar_url")))
    if match and int(match.group(1)) < oldest_allowed:
        if _same_profile(author, author_id, int(match.group(1))):
            return "stale"
    return "wrong"


def judge_timelines(
    reads: list[dict[str, Any]], pages: dict[int, list[tuple[int, int]]] | None
) -> dict[str, float]:
    """Reads whose authors are missing, wrong or stale, and whose posts differ from the DB's."""
    counts = Counter[str]()
    for read in reads:
        posts = read["posts"]
        started, finished = read["started"], read["finished"]
        verdicts = {
            judge_author(post.get("author"), post.get("author_id"), started, finished)
            for post in posts
        }
        counts.update(verdicts - {"ok"})
        if pages is not None:
            served = [(post.get("id"), post.get("author_id")) for post in posts]
            counts["posts"] += served != pages.get(read["user_id"])
    return {
        "feed.reads_checked": float(len(reads)),
        "feed.authors_missing": float(counts["missing"]),
        "feed.authors_wrong": float(counts["wrong"]),
        "feed.authors_stale": float(counts["stale"]),
        "feed.posts_wrong": float(counts["posts"]) if pages is not None else math.nan,
    }


def collect_feed(base_url: str, truth_path: Path, config: LabConfig) -> dict[str, float]:
    """Statements and outgoing calls per timeline request, event-loop lag, and whether the
    timelines the readers were shown hold the right posts and current authors."""
    before_path = truth_path.parent / "feed-before.json"
    empty = {key: {"buckets": {}, "sum": 0.0} for key in _FEED_HISTOGRAMS}
    raw: dict[str, Any] = json.loads(before_path.read_text()) if before_path.exists() else empty
    before = {
        key: {"buckets": {float(le): n for le, n in v["buckets"].items()}, "sum": v["sum"]}
        for key, v in raw.items()
    }
    after = _histograms(base_url)
    figures: dict[str, float] = {}
    db, requests, statements = _delta(after["db"], before["db"])
    _, _, calls = _delta(after["calls"], before["calls"])
    lag, ticks, lag_sum = _delta(after["lag"], before["lag"])
    figures["feed.timeline_requests"] = requests
    figures["feed.db_queries_per_request_max"] = _highest_bound(db)
    figures["feed.db_queries_per_request_mean"] = statements / requests if requests else math.nan
    figures["feed.external_calls_per_request_mean"] = calls / requests if requests else math.nan
    figures["feed.event_loop_lag_mean_ms"] = 1000 * lag_sum / ticks if ticks else math.nan
    figures["feed.event_loop_lag_max_ms"] = 1000 * _highest_bound(lag)
    figures["feed.external_calls_per_request_max"] = _highest_bound(
        _delta(after["calls"], before["calls"])[0]
    )
    figures.update(_judge_truth(truth_path, config))
    return figures


def expected_pages_in_compose(
    config: LabConfig, user_ids: set[int]
) -> dict[int, list[tuple[int, int]]]:
    """The same pages as expected_pages, read with psql inside the compose lab's postgres."""
    ids = ",".join(str(int(uid)) for uid in sorted(user_ids))
    rows = compose.query_postgres(
        config,
        f"SELECT u.uid, p.id, p.author_id FROM unnest(ARRAY[{ids}]::bigint[]) AS u(uid)"
        " CROSS JOIN LATERAL (SELECT p.id, p.author_id, p.posted_at FROM feed_posts p"
        " JOIN feed_follows f ON f.followee_id = p.author_id WHERE f.follower_id = u.uid"
        f" ORDER BY p.posted_at DESC, p.id DESC LIMIT {PAGE_SIZE}) p"
        " ORDER BY u.uid, p.posted_at DESC, p.id DESC",
    )
    pages: dict[int, list[tuple[int, int]]] = {uid: [] for uid in user_ids}
    for uid, post_id, author_id in rows:
        pages[int(uid)].append((int(post_id), int(author_id)))
    return pages


def _feed_pages(config: LabConfig, user_ids: set[int]) -> dict[int, list[tuple[int, int]]] | None:
    """Each reader's expected first page from the feed's database, wherever the lab keeps it."""
    url = feed_database_url(config.state_dir)
    try:
        if url is not None:
            return expected_pages(url, user_ids)
        if compose.use_compose(config):
            return expected_pages_in_compose(config, user_ids)
    except (SQLAlchemyError, compose.ComposeError) as exc:
        log.warning("feed database unreadable: %s", exc)
        return None
    log.warning("no feed database to judge posts against (DATABASE_URL unset, no SQLite)")
    return None


def _judge_truth(truth_path: Path, config: LabConfig) -> dict[str, float]:
    reads = [r for r in read_truth(truth_path) if r.get("kind") == "timeline"]
    if len(reads) > MAX_READS_CHECKED:
        reads = random.Random(truth_path.parent.name).sample(reads, MAX_READS_CHECKED)
    return judge_timelines(reads, _feed_pages(config, {read["user_id"] for read in reads}))
