"""The n-plus-one judge: timelines against the provider's profiles then and the database."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from drill.collectors.feed import (
    PROFILE_STALENESS_S,
    _feed_pages,
    expected_pages,
    expected_pages_in_compose,
    feed_database_url,
    judge_author,
    judge_timelines,
)
from drill.native import LabConfig
from services.feed.models import Base
from services.feed.seed import generate, reseed
from services.profiles.models import REVISION_PERIOD_S, profile_of, revision_started
from tests.conftest import need_server

AT = 1_800_000_000.0
AUTHOR = 42


def shown(profile_id: int, at: float) -> dict[str, Any]:
    """An author as the feed's JSON shows the provider's profile of that moment."""
    return profile_of(profile_id, at).model_dump(mode="json")


def test_a_current_author_is_ok_and_one_that_changed_during_the_read_too() -> None:
    """The profile current at any moment of the read, or within the staleness, is ok."""
    assert judge_author(shown(AUTHOR, AT), AUTHOR, AT, AT + 0.2) == "ok"
    assert judge_author(shown(AUTHOR, AT + 0.2), AUTHOR, AT, AT + 0.2) == "ok"
    assert judge_author(shown(AUTHOR, AT - PROFILE_STALENESS_S + 1), AUTHOR, AT, AT) == "ok"


def test_an_author_older_than_the_staleness_is_stale() -> None:
    """A revision that stopped being current more than PROFILE_STALENESS_S ago is stale."""
    old = profile_of(AUTHOR, AT - PROFILE_STALENESS_S - REVISION_PERIOD_S)
    ended = revision_started(AUTHOR, int(old.avatar_url.rsplit("/", 1)[1][:-4]) + 1)
    assert ended < AT - PROFILE_STALENESS_S
    assert judge_author(old.model_dump(mode="json"), AUTHOR, AT, AT) == "stale"
    long_ago = shown(AUTHOR, AT - 86_400)
    assert judge_author(long_ago, AUTHOR, AT, AT) == "stale"


def test_made_up_foreign_and_missing_authors_are_told_apart() -> None:
    """Empty fields are missing; another id, an edited field or a future profile is wrong."""
    current = shown(AUTHOR, AT)
    assert judge_author(None, AUTHOR, AT, AT) == "missing"
    assert judge_author({**current, "avatar_url": ""}, AUTHOR, AT, AT) == "missing"
    assert judge_author(shown(AUTHOR + 1, AT), AUTHOR, AT, AT) == "wrong"
    assert judge_author({**current, "display_name": "user42"}, AUTHOR, AT, AT) == "wrong"
    assert (
        judge_author({**current, "updated_at": "2026-01-01T00:00:00Z"}, AUTHOR, AT, AT) == "wrong"
    )
    future = shown(AUTHOR, AT + 3 * REVISION_PERIOD_S)
    assert judge_author(future, AUTHOR, AT, AT) == "wrong"


def test_reads_are_counted_once_per_kind_and_posts_compared_in_order() -> None:
    """A read counts once for each kind of fault it shows; posts must match the DB's page."""
    good = {"id": 1, "author_id": AUTHOR, "author": shown(AUTHOR, AT)}
    stale = {"id": 2, "author_id": 7, "author": shown(7, AT - 86_400)}
    reads = [
        {"user_id": 5, "started": AT, "finished": AT, "posts": [good, stale, stale]},
        {"user_id": 6, "started": AT, "finished": AT, "posts": [good]},
    ]
    pages = {5: [(1, AUTHOR), (2, 7), (2, 7)], 6: [(9, 3)]}
    figures = judge_timelines(reads, pages)
    assert figures["feed.reads_checked"] == 2
    assert figures["feed.authors_stale"] == 1
    assert figures["feed.authors_missing"] == figures["feed.authors_wrong"] == 0
    assert figures["feed.posts_wrong"] == 1
    assert judge_timelines(reads, None)["feed.posts_wrong"] != 0, "no database: NaN, not a pass"


def test_expected_pages_are_the_newest_posts_of_the_followed_accounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The judge's own query gives each reader's ten newest posts from its followees."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DRILL_FEED_DATABASE_URL", raising=False)
    assert feed_database_url(tmp_path) is None
    engine = create_engine(f"sqlite:///{tmp_path / 'feed.db'}")
    Base.metadata.create_all(engine)
    reseed(engine, 3, 1100)
    engine.dispose()
    url = feed_database_url(tmp_path)
    assert url is not None
    data = generate(3, 1100)
    pages = expected_pages(url, {1, 3})
    for reader in (1, 3):
        followees = {f["followee_id"] for f in data.follows if f["follower_id"] == reader}
        posts = sorted(
            (p for p in data.posts if p["author_id"] in followees),
            key=lambda p: (p["posted_at"], p["id"]),
            reverse=True,
        )[:10]
        assert pages[reader] == [(p["id"], p["author_id"]) for p in posts]


# Stands in for `docker compose`: `ps` names a running container, and `exec -T postgres psql`
# runs the same psql against the test's Postgres database instead of the container's.
FAKE_COMPOSE = """#!/usr/bin/env python3
import os, sys
args = sys.argv[1:]
if "ps" in args:
    print("0123456789ab")
    sys.exit(0)
psql = args[args.index("psql"):]
psql[psql.index("-U") + 1] = "postgres"
psql[psql.index("-d") + 1] = os.environ["FAKE_COMPOSE_DATABASE"]
os.execvp("psql", ["psql", "-h", "127.0.0.1", *psql[1:]])
"""


def test_under_compose_the_judge_reads_the_same_pages_with_psql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    """With no database URL, a compose lab's pages come from psql in its postgres container,
    and they are the pages the judge's own query reads."""
    if shutil.which("psql") is None:
        need_server("psql (Debian: postgresql-client)", "apt-get install postgresql-client")
    engine = create_engine(postgres_url)
    Base.metadata.create_all(engine)
    reseed(engine, 3, 1100)
    engine.dispose()
    fake = tmp_path / "fake-compose"
    fake.write_text(FAKE_COMPOSE)
    fake.chmod(0o755)
    monkeypatch.setenv("DRILL_COMPOSE", str(fake))
    monkeypatch.setenv("FAKE_COMPOSE_DATABASE", postgres_url.rsplit("/", 1)[1])
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DRILL_FEED_DATABASE_URL", raising=False)
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    config = LabConfig(root=tmp_path, state_dir=tmp_path / ".drill", port_offset=0)
    readers = {1, 2, 3, 17}
    assert expected_pages_in_compose(config, readers) == expected_pages(postgres_url, readers)
    assert _feed_pages(config, readers) == expected_pages(postgres_url, readers)
