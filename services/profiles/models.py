"""Profile schemas, and the deterministic profile each account id has."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel

# Ids the API knows: every account the feed's seed can create, and far more.
MAX_PROFILE_ID = 10_000_000

_FIRST = "Ada Bo Chen Dara Emeka Fatima Goran Hana Ines Jun Kofi Lena Mateo Nia Oskar".split()
_LAST = "Abe Berg Costa Diallo Eriksen Fischer Garcia Huang Jensen Kim Lopez Moreau Patel".split()
_TOPICS = "coffee trains chess rust gardening jazz climbing baking astronomy running".split()


class ProfilePublic(BaseModel):
    id: int
    display_name: str
    avatar_url: str
    bio: str
    verified: bool


class ProfilesPublic(BaseModel):
    data: list[ProfilePublic]


def profile_of(profile_id: int) -> ProfilePublic:
    """The same profile for the same id, in every run and every process."""
    digest = hashlib.blake2b(profile_id.to_bytes(8, "big"), digest_size=8).digest()
    first, last, topic, topic2, flag = digest[0], digest[1], digest[2], digest[3], digest[4]
    return ProfilePublic(
        id=profile_id,
        display_name=f"{_FIRST[first % len(_FIRST)]} {_LAST[last % len(_LAST)]}",
        avatar_url=f"https://avatars.example.net/{digest.hex()}.png",
        bio=f"Into {_TOPICS[topic % len(_TOPICS)]} and {_TOPICS[topic2 % len(_TOPICS)]}.",
        verified=flag % 16 == 0,
    )
