"""The services' admin calls, made as the instructor: reseeding the feed.

Admin routes need the instructor's token (services.kit.admin). On the lab's own machine the
runner's workshop store has it (`drill program token`), and asking for it makes it the first
time, which also publishes its digest for the services.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from drill import native


class AdminError(Exception):
    """An admin call was refused or failed; the message says what to do."""


class Unreachable(AdminError):
    pass


def instructor_token(config: native.LabConfig) -> str:
    """The instructor's token of this lab (made on first use)."""
    from drill.program.journal import Journal
    from drill.program.runner import ProgramFiles, load
    from drill.program.teams import Workshop

    files = ProgramFiles.of(config.state_dir)
    program, _ = load(config)
    return Workshop(files.directory, program, Journal(files.journal)).instructor_token()


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def reseed_feed(
    url: str, token: str, seed: int, users: int, *, timeout: float = 300, poll_s: float = 0.25
) -> dict[str, Any]:
    """Reseed the feed at url and wait for it: what the reseed created (SeedPublic)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, headers=headers(token), timeout=30, trust_env=False) as http:
        try:
            started = http.post("/admin/seed", json={"seed": seed, "users": users})
        except httpx.HTTPError as exc:
            raise Unreachable(f"feed is not reachable at {url} ({type(exc).__name__})") from None
        if started.status_code != 202:
            raise AdminError(_refusal("feed refused the reseed", started))
        location = started.headers["location"]
        while True:
            job = http.get(location)
            if job.status_code != 200:
                raise AdminError(_refusal("the reseed job could not be read", job))
            body: dict[str, Any] = job.json()
            if body["status"] == "done":
                result: dict[str, Any] = body["result"]
                return result
            if body["status"] == "failed":
                raise AdminError(f"the reseed failed: {body.get('detail')}")
            if time.monotonic() > deadline:
                raise AdminError(f"the reseed was still running after {timeout:.0f} s")
            time.sleep(poll_s)


def _refusal(what: str, response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", "")
    except ValueError:
        detail = response.text[:300]
    return f"{what}: HTTP {response.status_code} {detail}"
