"""Feed routes: a user's timeline, the user directory, and reseeding the lab's data.

Reseeding wipes the data, so it is an admin route: it needs the instructor's token
(services.kit.admin). It answers 202 at once and runs in the background; the job it names in
`Location` says when it is done.
"""

from __future__ import annotations

import functools
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, Path, Query, Response
from sqlalchemy import Engine, func, select

from services.feed import seed
from services.feed.jobs import Busy, SeedJobPublic, SeedJobs
from services.feed.metrics import FEED_POSTS
from services.feed.models import (
    MAX_ID,
    AuthorPublic,
    FeedPublic,
    Follow,
    Post,
    PostPublic,
    SeedCreate,
    User,
    UserPublic,
    UsersPublic,
)
from services.kit.admin import InstructorDep
from services.kit.app import from_state
from services.kit.db import SessionDep
from services.kit.errors import Conflict, NotFound, problems
from services.kit.http import ROUTE

router = APIRouter(tags=["feed"])

UserIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="The reader's user id")]
JobIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]
ProfilesDep = Annotated[httpx.Client, Depends(from_state("profiles"))]


@router.get("/feed/{user_id}", responses=problems(404))
async def get_feed(
    user_id: UserIdPath,
    session: SessionDep,
    profiles: ProfilesDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Posts per page")] = 10,
) -> FeedPublic:
    """The latest posts of the accounts the user follows, newest first, with their authors."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    followees = session.scalars(select(Follow.followee_id).where(Follow.follower_id == user_id))
    posts: list[Post] = []
    for followee_id in followees.all():
        posts.extend(
            session.scalars(
                select(Post)
                .where(Post.author_id == followee_id)
                .order_by(Post.posted_at.desc())
                .limit(limit)
            )
        )
    posts.sort(key=lambda p: (p.posted_at, p.id), reverse=True)
    page = []
    for post in posts[:limit]:
        author = session.scalars(select(User).where(User.id == post.author_id)).one()
        response = profiles.get(
            f"/profiles/{author.id}", extensions={ROUTE: "/profiles/{profile_id}"}
        )
        response.raise_for_status()
        profile = response.json()
        page.append(
            PostPublic(
                id=post.id,
                author_id=author.id,
                body=post.body,
                posted_at=post.posted_at,
                author=AuthorPublic(
                    id=author.id,
                    handle=author.handle,
                    display_name=profile["display_name"],
                    avatar_url=profile["avatar_url"],
                    verified=profile["verified"],
                    updated_at=profile["updated_at"],
                ),
            )
        )
    FEED_POSTS.observe(len(page))
    return FeedPublic(user_id=user_id, posts=page)


@router.get("/users")
def list_users(
    session: SessionDep,
    after: Annotated[int, Query(ge=0, le=MAX_ID, description="Users with id above this")] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> UsersPublic:
    """Users with how many accounts each follows (load tests pick readers from this)."""
    following = func.count(Follow.followee_id)
    rows = session.execute(
        select(User.id, User.handle, following)
        .outerjoin(Follow, Follow.follower_id == User.id)
        .where(User.id > after)
        .group_by(User.id, User.handle)
        .order_by(User.id)
        .limit(limit + 1)
    ).all()
    page = rows[:limit]
    return UsersPublic(
        data=[UserPublic(id=uid, handle=handle, following=n) for uid, handle, n in page],
        next_after=page[-1][0] if len(rows) > limit else None,
    )


EngineDep = Annotated[Engine, Depends(from_state("engine"))]
SeedJobsDep = Annotated[SeedJobs, Depends(from_state("seed_jobs"))]


@router.post(
    "/admin/seed",
    status_code=202,
    responses={
        202: {
            "headers": {"Location": {"schema": {"type": "string"}, "description": "The job"}},
            "links": {
                "GetSeedJob": {
                    "operationRef": "#/paths/~1admin~1seed~1{job_id}/get",
                    "parameters": {"job_id": "$response.body#/id"},
                }
            },
        },
        **problems(401, 409),
    },
)
def reseed(
    body: SeedCreate,
    response: Response,
    engine: EngineDep,
    jobs: SeedJobsDep,
    _instructor: InstructorDep,
) -> SeedJobPublic:
    """Start replacing the lab's users, follows and posts with another seed number's dataset.

    202 at once, with the job's URL in Location: poll it until `status` is `done` (or
    `failed`). The data changes in one transaction at the end. 409 while a reseed runs.
    """
    run = functools.partial(seed.reseed, engine, body.seed, body.users)
    try:
        job = jobs.start(body.seed, body.users, run)
    except Busy as exc:
        raise Conflict(f"reseed {exc.running.id} is still running") from None
    response.headers["Location"] = f"/admin/seed/{job.id}"
    return job


@router.get("/admin/seed/{job_id}", responses=problems(401, 404))
def reseed_job(job_id: JobIdPath, jobs: SeedJobsDep, _instructor: InstructorDep) -> SeedJobPublic:
    """A reseed job: running, done (with what it created) or failed (with why)."""
    job = jobs.get(job_id)
    if job is None:
        raise NotFound(f"no reseed job {job_id} (this process keeps the last few)")
    return job
