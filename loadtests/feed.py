"""Timeline readers for the feed: most follow a few accounts; a flag brings in heavy followers.

Readers come from the lab's own users (GET /users), so a reseed changes who reads. Typical
readers follow at most 20 accounts. With `feed.heavy_users` on, a quarter of the reads come
from users who follow 100 accounts or more.
The Locust process reads that flag through the same `faults` client the services use.
Every timeline read is written to the run's ground truth (who asked, when, and the posts and
authors shown), so drill verify can check them against the database and the provider.

Run alone for debugging: `python loadtests/feed.py` reads a few timelines from FEED_URL.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, task
from recorder import CLIENT_TIMEOUT_S, record_truth, track_flags

from faults import Flags

# Staging's test accounts follow 20 accounts at most; the launch brought in the rest.
TYPICAL_MAX_FOLLOWING = 20
HEAVY_FOLLOWING = 100
HEAVY_SHARE = 0.25

_flags = Flags(
    Path(os.environ.get("DRILL_STATE_DIR", ".drill")) / "flags.json", service="feed-load"
)
# feed.heavy_users acts here, in the readers, not in the service: verify counts it from Locust.
track_flags(_flags)
_readers: dict[str, list[int]] = {}
_lock = threading.Lock()


def _load_readers(host: str) -> None:
    """Fetch the user directory once per process, outside Locust's stats."""
    with _lock:
        if _readers:
            return
        typical, heavy, after = [], [], 0
        while after is not None:
            url = f"{host}/users?limit=5000&after={after}"
            with urllib.request.urlopen(url, timeout=60) as response:
                page = json.load(response)
            for user in page["data"]:
                if user["following"] >= HEAVY_FOLLOWING:
                    heavy.append(user["id"])
                elif user["following"] <= TYPICAL_MAX_FOLLOWING:
                    typical.append(user["id"])
            after = page["next_after"]
        if not typical or not heavy:
            raise RuntimeError(f"{host}/users has no typical or no heavy readers; reseed the feed")
        _readers.update(typical=typical, heavy=heavy)
        _flags.start()


class TimelineReader(FastHttpUser):
    """Opens the app, reads the first page of the timeline, scrolls, comes back a while later."""

    # The Locust web UI (compose) starts with this host; `drill verify` passes --host.
    host = os.environ.get("FEED_URL", "http://127.0.0.1:8021")
    # A reader reads a page for 5 to 10 seconds: about 2.7 timeline reads a second at 20 users.
    wait_time = between(5, 10)
    # The app gives up on a timeline after the judge's client timeout (scenarios.yaml).
    network_timeout = CLIENT_TIMEOUT_S or 60.0
    connection_timeout = CLIENT_TIMEOUT_S or 60.0

    def on_start(self) -> None:
        _load_readers(self.host or "")
        self.rng = random.Random()
        # Readers open the app at their own moment, not all in the millisecond they spawn.
        self.wait()

    @task
    def read_timeline(self) -> None:
        heavy = _flags.enabled("feed.heavy_users") and self.rng.random() < HEAVY_SHARE
        user_id = self.rng.choice(_readers["heavy" if heavy else "typical"])
        started = time.time()
        with self.rest("GET", f"/feed/{user_id}", name="/feed/{user_id}") as response:
            if response.js is None or response.status_code != 200:
                return  # rest() has already marked the failure
            self._record(user_id, started, response.js)
            assert response.js["user_id"] == user_id, "timeline of another user,"
            posts = response.js["posts"]
            assert len(posts) <= 10, f"{len(posts)} posts on a 10-post page,"
            # Whether each author is the right profile, and fresh, is drill verify's to judge.
            for post in posts:
                author = post.get("author") or {}
                assert author.get("id") in (None, post["author_id"]), "post with a foreign author,"
            stamps = [post["posted_at"] for post in posts]
            assert stamps == sorted(stamps, reverse=True), "timeline not newest first,"

    def _record(self, user_id: int, started: float, page: dict[str, Any]) -> None:
        """What this reader asked for, when, and what it was shown: drill verify's sample."""
        posts = page.get("posts") if isinstance(page, dict) else None
        record_truth(
            {
                "kind": "timeline",
                "user_id": user_id,
                "started": round(started, 3),
                "finished": round(time.time(), 3),
                "posts": [
                    {"id": post.get("id"), "author_id": post.get("author_id"),
                     "author": post.get("author")}
                    for post in (posts if isinstance(posts, list) else [])
                    if isinstance(post, dict)
                ],
            }
        )  # fmt: skip


if __name__ == "__main__":
    from locust import run_single_user

    run_single_user(TimelineReader)
