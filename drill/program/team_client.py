"""A team's side of the runner's API: `drill claim`, `drill hint`, `drill notes`, `verify --submit`.

The instructor's runner is at DRILL_SCOREBOARD_URL (default: this machine's runner, port 8000
plus DRILL_PORT_OFFSET); the team's token is DRILL_TEAM_TOKEN. Each lab on a team's laptop
posts there over the room's network.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from drill.prometheus import RUNNER_PORT

TIMEOUT_S = 10.0


class TeamClientError(Exception):
    """The runner could not be reached, or refused; the message says which and why."""

    def __init__(self, message: str, reachable: bool = True) -> None:
        super().__init__(message)
        self.reachable = reachable


@dataclass(frozen=True)
class Scoreboard:
    url: str
    token: str | None

    @classmethod
    def from_env(cls, port_offset: int = 0) -> Scoreboard:
        default = f"http://127.0.0.1:{RUNNER_PORT + port_offset}"
        url = os.environ.get("DRILL_SCOREBOARD_URL", "").strip() or default
        return cls(url.rstrip("/"), os.environ.get("DRILL_TEAM_TOKEN", "").strip() or None)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        if self.token is None:
            raise TeamClientError(
                "DRILL_TEAM_TOKEN is not set: ask the instructor for your team's token"
            )
        try:
            response = httpx.request(
                method,
                self.url + path,
                headers={
                    "Authorization": f"Bearer {self.token}",
                    "Content-Type": "application/json",
                },
                content=None if body is None else json.dumps(body, allow_nan=True),
                timeout=TIMEOUT_S,
            )
        except httpx.HTTPError as exc:
            raise TeamClientError(
                f"no runner answers at {self.url} ({type(exc).__name__}); set "
                "DRILL_SCOREBOARD_URL to the instructor's runner",
                reachable=False,
            ) from None
        if response.status_code >= 400:
            raise TeamClientError(f"the runner refused ({response.status_code}): {_why(response)}")
        if "json" in response.headers.get("content-type", ""):
            return response.json()
        return response.text


def _why(response: httpx.Response) -> str:
    try:
        document = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(document, dict):
        return str(document.get("detail") or document.get("title") or document)
    return str(document)


def local_hints(state_dir: Path, scenario: str, hints: list[str]) -> tuple[int, str] | None:
    """With no runner: the next hint from this lab's scenarios.yaml, remembered in
    `<state dir>/hints-opened.json` so the ladder still goes one rung at a time."""
    path = state_dir / "hints-opened.json"
    try:
        opened: dict[str, int] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        opened = {}
    number = int(opened.get(scenario, 0)) + 1
    if number > len(hints):
        return None
    opened[scenario] = number
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(opened, indent=2))
    return number, hints[number - 1]
