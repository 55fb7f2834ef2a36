"""Profile routes: one profile, or a batch. Every call pays the API's latency and quota."""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from services.kit.app import FlagsDep, from_state
from services.kit.errors import DomainError, problems
from services.profiles.metrics import PROFILES_SERVED, REJECTED
from services.profiles.models import MAX_PROFILE_ID, ProfilePublic, ProfilesPublic, profile_of
from services.profiles.quota import TokenBucket
from services.profiles.settings import ProfilesSettings

router = APIRouter(tags=["profiles"])

QuotaDep = Annotated[TokenBucket, Depends(from_state("quota"))]
RngDep = Annotated[random.Random, Depends(from_state("rng"))]
SettingsDep = Annotated[ProfilesSettings, Depends(from_state("settings"))]

ProfileIdPath = Annotated[int, Path(ge=1, le=MAX_PROFILE_ID)]
IDS_PATTERN = r"^\d{1,8}(,\d{1,8})*$"
# What the schema promises will be served: ids 1..9,999,999 (the range check's message is
# clearer than a pattern's, so IDS_PATTERN stays the looser rule that is enforced).
DOCUMENTED_IDS = r"^[1-9][0-9]{0,6}(,[1-9][0-9]{0,6})*$"


class BatchTooLarge(DomainError):
    """More ids than one call may ask for, or ids the API cannot know."""

    status_code = 422
    code = "batch_too_large"


async def _behave_like_the_real_api(
    flags: FlagsDep, quota: QuotaDep, rng: RngDep, settings: SettingsDep
) -> None:
    """Quota first (a cheap 429), then the network and backend latency, then backend errors."""
    wait = quota.take()
    if wait > 0:
        REJECTED.labels("rate_limited").inc()
        raise HTTPException(
            429,
            detail="rate limit exceeded for this API key",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    context = {"targetingKey": uuid.uuid4().hex}
    latency_ms = flags.integer("profiles.latency_ms", context)
    if latency_ms > 0:
        sigma = settings.latency_sigma
        await asyncio.sleep(latency_ms * rng.lognormvariate(0, sigma) / 1000)
    error_rate = flags.number("profiles.error_rate", context)
    if error_rate > 0 and rng.random() < error_rate:
        # Half throttling (retry later), half an unavailable backend: both are retryable.
        if rng.random() < 0.5:
            REJECTED.labels("throttled").inc()
            raise HTTPException(429, detail="too many requests", headers={"Retry-After": "1"})
        REJECTED.labels("unavailable").inc()
        raise HTTPException(503, detail="profile backend unavailable")


@router.get("/profiles/{profile_id}", responses=problems(429, 503))
async def get_profile(
    profile_id: ProfileIdPath, flags: FlagsDep, quota: QuotaDep, rng: RngDep, settings: SettingsDep
) -> ProfilePublic:
    await _behave_like_the_real_api(flags, quota, rng, settings)
    PROFILES_SERVED.labels("single").inc()
    return profile_of(profile_id)


@router.get("/profiles", responses=problems(429, 503))
async def get_profiles(
    flags: FlagsDep,
    quota: QuotaDep,
    rng: RngDep,
    settings: SettingsDep,
    ids: Annotated[
        str,
        Query(
            pattern=IDS_PATTERN,
            max_length=9000,
            description="Comma-separated ids, at most the API's batch size (default 100)",
            json_schema_extra={"pattern": DOCUMENTED_IDS},
        ),
    ],
) -> ProfilesPublic:
    """Several profiles in one call, in the order asked (duplicates once), at most max_batch."""
    wanted = list(dict.fromkeys(int(part) for part in ids.split(",")))
    limit = settings.max_batch
    if len(wanted) > limit:
        raise BatchTooLarge(f"at most {limit} ids per call, got {len(wanted)}")
    unknown = [i for i in wanted if not 1 <= i <= MAX_PROFILE_ID]
    if unknown:
        raise BatchTooLarge(f"ids must be between 1 and {MAX_PROFILE_ID}: {unknown[:5]}")
    await _behave_like_the_real_api(flags, quota, rng, settings)
    PROFILES_SERVED.labels("batch").inc(len(wanted))
    # One moment for the whole answer, as one read of the provider's database would give.
    now = time.time()
    return ProfilesPublic(data=[profile_of(i, now) for i in wanted])
