"""Profiles domain metrics: what the API's owner would watch."""

from __future__ import annotations

from prometheus_client import Counter

PROFILES_SERVED = Counter(
    "profiles_served", "Profiles returned, single or in batches", ["endpoint"]
)
REJECTED = Counter("profiles_rejected", "Requests turned away before any work", ["reason"])
