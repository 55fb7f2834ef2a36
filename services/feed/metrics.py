"""Feed domain metrics: what the timeline's owner would watch."""

from __future__ import annotations

from prometheus_client import Histogram

FEED_POSTS = Histogram(
    "feed_posts_per_response",
    "Posts returned in one timeline page",
    buckets=(0, 1, 5, 10, 20, 50, 100),
)
