"""Schema types every service shares."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator


def as_utc(value: datetime) -> datetime:
    """The moment in UTC. A naive value is UTC already: SQLite and `DateTime` columns drop the
    offset the lab stored, and an RFC 3339 `date-time` must carry one."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDateTime = Annotated[datetime, AfterValidator(as_utc)]
