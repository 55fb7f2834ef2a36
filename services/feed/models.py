"""Feed tables (users, who follows whom, posts) and API schemas."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.kit.models import UtcDateTime

# Ids are positive 32-bit integers: what the mobile app sends fits in an int column.
MAX_ID = 2**31 - 1


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "feed_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    handle: Mapped[str] = mapped_column(String(32), unique=True)


class Follow(Base):
    """follower_id follows followee_id."""

    __tablename__ = "feed_follows"

    follower_id: Mapped[int] = mapped_column(ForeignKey("feed_users.id"), primary_key=True)
    followee_id: Mapped[int] = mapped_column(
        ForeignKey("feed_users.id"), primary_key=True, index=True
    )


class Post(Base):
    __tablename__ = "feed_posts"
    __table_args__ = (Index("ix_feed_posts_author_posted", "author_id", "posted_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    author_id: Mapped[int] = mapped_column(ForeignKey("feed_users.id"))
    body: Mapped[str] = mapped_column(String(280))
    posted_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class AuthorPublic(BaseModel):
    id: int
    handle: str
    display_name: str
    avatar_url: str
    verified: bool
    # When the provider's profile took this form: how fresh the author shown is.
    updated_at: UtcDateTime


class PostPublic(BaseModel):
    id: int
    author_id: int
    body: str
    posted_at: UtcDateTime
    author: AuthorPublic


class FeedPublic(BaseModel):
    user_id: int
    posts: list[PostPublic]


class UserPublic(BaseModel):
    id: int
    handle: str
    following: int = Field(description="Accounts this user follows")


class UsersPublic(BaseModel):
    data: list[UserPublic]
    next_after: int | None


class SeedCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(7, ge=0, le=2**31 - 1, description="The same number gives the same data")
    users: int = Field(2000, ge=1100, le=50_000)


class SeedPublic(BaseModel):
    """What a finished reseed created."""

    seed: int
    users: int
    follows: int
    posts: int
