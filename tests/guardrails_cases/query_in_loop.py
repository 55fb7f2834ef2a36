"""Cases for guardrails/semgrep/query-in-loop.yml."""

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session


class Follow:
    followee_id = 0
    follower_id = 0


class Post:
    author_id = 0


class User:
    id = 0


def timeline(session: Session, user_id: int, limit: int) -> list[object]:
    followees = session.scalars(select(Follow.followee_id).where(Follow.follower_id == user_id))
    posts: list[Post] = []
    for followee_id in followees.all():
        posts.extend(
            session.scalars(
                # ruleid: query-in-loop
                select(Post).where(Post.author_id == followee_id)
            )
        )
    authors = []
    for post in posts[:limit]:
        # ruleid: query-in-loop
        authors.append(session.scalars(select(User).where(User.id == post.author_id)).one())
    rows = session.execute(select(Post)).all()
    # ruleid: query-in-loop
    handles = [session.get(User, row.author_id) for row in rows]
    for _index, row in enumerate(rows):
        author_id = row.author_id
        # ruleid: query-in-loop
        session.get(User, author_id)
    return [*authors, *handles]


def fine(session: Session, ids: list[int]) -> dict[str, int]:
    for user_id in ids:
        # ok: query-in-loop
        session.get(User, user_id)
    for table in (Post, User):
        # ok: query-in-loop
        session.execute(delete(table))
    # ok: query-in-loop
    for tx in session.scalars(select(Post)):
        print(tx)  # noqa: T201
    rows = session.execute(select(Post.author_id, User.id).join(User)).all()
    # ok: query-in-loop
    session.execute(insert(User), [{"id": row.id} for row in rows])
    return {str(row.author_id): row.id for row in rows}
