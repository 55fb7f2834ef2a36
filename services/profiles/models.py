"""Profile schemas, and the profile each account id has at any moment.

Accounts edit their profiles: each takes a new revision (a new avatar) every
REVISION_PERIOD_S seconds, at a phase of its own so that not all change at once. The profile
of (id, revision) is a pure function, so a judge can tell a current profile from a stale or
made-up one without asking this API.
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import UTC, datetime

from pydantic import BaseModel

from services.kit.models import UtcDateTime

# Ids the API knows: every account the feed's seed can create, and far more.
MAX_PROFILE_ID = 10_000_000
# Faster than real people edit, on purpose: a 30 s verify run sees every profile change once,
# so a cache that never refreshes shows stale authors within one run.
REVISION_PERIOD_S = 20

_FIRST = "Ada Bo Chen Dara Emeka Fatima Goran Hana Ines Jun Kofi Lena Mateo Nia Oskar".split()
_LAST = "Abe Berg Costa Diallo Eriksen Fischer Garcia Huang Jensen Kim Lopez Moreau Patel".split()
_TOPICS = "coffee trains chess rust gardening jazz climbing baking astronomy running".split()


class ProfilePublic(BaseModel):
    id: int
    display_name: str
    avatar_url: str
    bio: str
    verified: bool
    updated_at: UtcDateTime


class ProfilesPublic(BaseModel):
    data: list[ProfilePublic]


def _digest(profile_id: int) -> bytes:
    return hashlib.blake2b(profile_id.to_bytes(8, "big"), digest_size=8).digest()


def _phase_s(profile_id: int) -> float:
    """When in the period this account edits its profile: spread over the whole period."""
    return int.from_bytes(_digest(profile_id)[5:7], "big") % (REVISION_PERIOD_S * 1000) / 1000


def revision_at(profile_id: int, at: float) -> int:
    """The revision the account's profile has at epoch second `at`."""
    return math.floor((at + _phase_s(profile_id)) / REVISION_PERIOD_S)


def revision_started(profile_id: int, revision: int) -> float:
    """Epoch second at which `revision` became the account's current profile."""
    return revision * REVISION_PERIOD_S - _phase_s(profile_id)


def profile_revision(profile_id: int, revision: int) -> ProfilePublic:
    """The profile of an account at one revision: the same in every run and every process."""
    digest = _digest(profile_id)
    first, last, topic, topic2, flag = digest[0], digest[1], digest[2], digest[3], digest[4]
    return ProfilePublic(
        id=profile_id,
        display_name=f"{_FIRST[first % len(_FIRST)]} {_LAST[last % len(_LAST)]}",
        avatar_url=f"https://avatars.example.net/{digest.hex()}/{revision}.png",
        bio=f"Into {_TOPICS[topic % len(_TOPICS)]} and {_TOPICS[topic2 % len(_TOPICS)]}.",
        verified=flag % 16 == 0,
        updated_at=datetime.fromtimestamp(revision_started(profile_id, revision), UTC),
    )


def profile_of(profile_id: int, at: float | None = None) -> ProfilePublic:
    """The account's current profile (at epoch second `at`, default now)."""
    return profile_revision(profile_id, revision_at(profile_id, time.time() if at is None else at))
