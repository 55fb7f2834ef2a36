"""poll_until: wait for an eventually-true condition, and say what was still missing if not."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    check: Callable[[], T], description: str, timeout: float, interval: float = 0.2
) -> T:
    """check()'s result once it stops raising AssertionError; after timeout seconds, fail with
    the description and the last thing check() found missing."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError as exc:
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{description}: not within {timeout:g} s; still missing: {exc}"
                ) from None
        time.sleep(interval)
