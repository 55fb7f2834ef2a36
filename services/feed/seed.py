"""A deterministic social graph: users, a power-law follow graph, and posts.

The same seed number gives the same rows on SQLite and Postgres. Most users follow a handful
of accounts; a few follow a thousand or more. Who gets followed leans toward who posts most.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, insert, select

from services.feed.models import Follow, Post, SeedPublic, User

log = logging.getLogger("feed.seed")

# Users whose followee counts the benchmarks and the load test rely on, whatever the seed.
ANCHORS = {1: 1000, 2: 100, 3: 10}
# Out-degree ~ Pareto(alpha=1.1) from 2: median about 4, one user in a hundred past 100.
FOLLOW_MIN, FOLLOW_ALPHA = 2.0, 1.1
# Posts per user ~ Pareto(alpha=1.3) from 1.5, floored: most post once or twice, a few daily.
POSTS_SCALE, POSTS_ALPHA, MAX_POSTS = 1.5, 1.3, 120
# Above this many followees, weighted sampling without replacement beats rejection.
_DENSE = 100
EPOCH = datetime(2026, 11, 1)
WINDOW_S = 30 * 86_400
_WORDS = ("ship", "deploy", "coffee", "pager", "latency", "weekend", "trains", "garden",
          "rollback", "review", "standup", "release", "incident", "lunch", "benchmark")  # fmt: skip


@dataclass(frozen=True)
class Dataset:
    seed: int
    users: list[dict[str, Any]]
    follows: list[dict[str, Any]]
    posts: list[dict[str, Any]]

    def following(self) -> dict[int, int]:
        """Followee count per user id."""
        counts = dict.fromkeys((u["id"] for u in self.users), 0)
        for edge in self.follows:
            counts[edge["follower_id"]] += 1
        return counts


def _pareto(rng: random.Random, scale: float, alpha: float) -> float:
    return float(scale * (1.0 - rng.random()) ** (-1.0 / alpha))


def _followees(
    rng: random.Random,
    ids: list[int],
    weights: list[float],
    cumulative: list[float],
    me: int,
    k: int,
) -> list[int]:
    if k > _DENSE:
        # Efraimidis-Spirakis: the k largest u^(1/w) are a weighted sample without replacement.
        keys = ((rng.random() ** (1.0 / w), uid) for uid, w in zip(ids, weights, strict=True))
        return sorted(uid for _, uid in heapq.nlargest(k + 1, keys) if uid != me)[:k]
    chosen: set[int] = set()
    while len(chosen) < k:
        for uid in rng.choices(ids, cum_weights=cumulative, k=k - len(chosen)):
            if uid != me:
                chosen.add(uid)
    return sorted(chosen)


def generate(seed: int, users: int) -> Dataset:
    """The rows for `users` users from seed number `seed`; pure, so tests can check its shape."""
    rng = random.Random(seed)
    ids = list(range(1, users + 1))
    posts_per_user = [min(MAX_POSTS, int(_pareto(rng, POSTS_SCALE, POSTS_ALPHA))) for _ in ids]
    # Squared: a few prolific accounts gather most followers, as on any social network.
    weights = [(1.0 + n) ** 2.0 for n in posts_per_user]
    cumulative = list(itertools.accumulate(weights))
    user_rows = [{"id": uid, "handle": f"user{uid}"} for uid in ids]
    follows: list[dict[str, Any]] = []
    for uid in ids:
        k = ANCHORS.get(uid) or min(users - 1, int(_pareto(rng, FOLLOW_MIN, FOLLOW_ALPHA)))
        targets = _followees(rng, ids, weights, cumulative, uid, k)
        follows.extend({"follower_id": uid, "followee_id": t} for t in targets)
    posts: list[dict[str, Any]] = []
    for uid, count in zip(ids, posts_per_user, strict=True):
        for _ in range(count):
            words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
            posts.append(
                {
                    "id": len(posts) + 1,
                    "author_id": uid,
                    "body": f"{words}.",
                    "posted_at": EPOCH - timedelta(seconds=rng.randrange(WINDOW_S)),
                }
            )
    return Dataset(seed, user_rows, follows, posts)


def reseed(engine: Engine, seed: int, users: int) -> SeedPublic:
    """Replace every user, follow and post with the dataset of `seed`, in one transaction."""
    started = time.perf_counter()
    data = generate(seed, users)
    with engine.begin() as conn:
        for table in (Post, Follow, User):
            conn.execute(delete(table))
        conn.execute(insert(User), data.users)
        conn.execute(insert(Follow), data.follows)
        conn.execute(insert(Post), data.posts)
    log.info(
        "seeded %d users, %d follows, %d posts from seed %d in %.1f s",
        len(data.users), len(data.follows), len(data.posts), seed,
        time.perf_counter() - started,
    )  # fmt: skip
    return SeedPublic(seed=seed, users=users, follows=len(data.follows), posts=len(data.posts))


def seed_if_empty(engine: Engine, seed: int, users: int) -> None:
    with engine.connect() as conn:
        empty = conn.execute(select(User.id).limit(1)).first() is None
    if empty:
        reseed(engine, seed, users)
