"""Grafana annotations: every phase change and flag change, marked on the dashboards' timelines.

A phase (or break) becomes a region: `POST /api/annotations` when it begins, closed with
`PATCH /api/annotations/<id>` (its `timeEnd`) when the next one begins or the program stops. A
flag change is a point. Grafana is optional: the native lab does not start it. When it does not
answer, annotations are skipped and the journal gets one note per outage (and one when it
answers again), never one per event. Requests run on a thread of their own with a short
timeout, so a hanging Grafana never delays a tick or the rollback. The open region's id is kept
in a small file, so a runner restarted mid-phase still closes it.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

GRAFANA_URL_ENV = "DRILL_GRAFANA_URL"
# compose.yaml publishes Grafana on 127.0.0.1:3000 (DESIGN.md's port table).
DEFAULT_GRAFANA_URL = "http://127.0.0.1:3000"
# Anonymous visitors are viewers; writing annotations takes an editor. Grafana's own
# first-start admin unless the lab sets DRILL_GRAFANA_TOKEN (a service account token) or these.
USER_ENV, PASSWORD_ENV, TOKEN_ENV = (
    "DRILL_GRAFANA_USER",
    "DRILL_GRAFANA_PASSWORD",
    "DRILL_GRAFANA_TOKEN",
)
TIMEOUT_S = 0.5
TAGS = ("drill",)

Note = Callable[[str], None]


@dataclass(frozen=True)
class _Job:
    method: str  # "region", "close" or "point"
    at: datetime
    text: str = ""
    tags: tuple[str, ...] = ()


def grafana_url() -> str:
    return os.environ.get(GRAFANA_URL_ENV, "").strip().rstrip("/") or DEFAULT_GRAFANA_URL


def _client(url: str) -> httpx.Client:
    token = os.environ.get(TOKEN_ENV, "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    auth = None
    if not token:
        auth = (os.environ.get(USER_ENV, "admin"), os.environ.get(PASSWORD_ENV, "admin"))
    # trust_env=False: an HTTP(S)_PROXY in the environment must not capture calls to 127.0.0.1.
    return httpx.Client(
        base_url=url, headers=headers, auth=auth, timeout=TIMEOUT_S, trust_env=False
    )


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


class Annotator:
    """Posts annotations in the background; `note` journals an outage once per outage."""

    def __init__(self, state_file: Path, note: Note, url: str | None = None) -> None:
        self.url = url or grafana_url()
        self.state_file = state_file
        self.note = note
        self.down = False
        self.skipped = 0
        self.posted = 0
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="annotations", daemon=True)
        self._thread.start()

    def phase(self, at: datetime, text: str | None, tags: tuple[str, ...] = ()) -> None:
        """Close the open region and open one for the entry that begins now (None: the end)."""
        self._jobs.put(_Job("close", at))
        if text is not None:
            self._jobs.put(_Job("region", at, text, ("phase", *tags)))

    def point(self, at: datetime, text: str, tags: tuple[str, ...] = ()) -> None:
        self._jobs.put(_Job("point", at, text, tags))

    def close(self, at: datetime, timeout: float = 0.5) -> None:
        """Close the open region and finish the queue, giving up after `timeout` seconds."""
        self._jobs.put(_Job("close", at))
        self._jobs.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        with _client(self.url) as client:
            while (job := self._jobs.get()) is not None:
                self._do(client, job)

    def _do(self, client: httpx.Client, job: _Job) -> None:
        region = self._open_region()
        if job.method == "close":
            if region is None:
                return
            self._save(None)
            self._send(client, "PATCH", f"/api/annotations/{region}", {"timeEnd": _ms(job.at)})
            return
        body = {"time": _ms(job.at), "tags": [*TAGS, *job.tags], "text": job.text}
        answer = self._send(client, "POST", "/api/annotations", body)
        if job.method == "region" and answer is not None and isinstance(answer.get("id"), int):
            self._save(answer["id"])

    def _send(
        self, client: httpx.Client, method: str, path: str, body: dict[str, Any]
    ) -> dict[str, Any] | None:
        try:
            response = client.request(method, path, json=body)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self.skipped += 1
            if not self.down:
                self.down = True
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self.note(
                    f"Grafana at {self.url} did not take an annotation ({why}); annotations "
                    "are skipped until it answers"
                )
            return None
        self.posted += 1
        if self.down:
            self.down = False
            self.note(f"Grafana at {self.url} answers again; {self.skipped} annotations skipped")
            self.skipped = 0
        try:
            answer = response.json()
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {}

    def _open_region(self) -> int | None:
        try:
            region = json.loads(self.state_file.read_text()).get("region")
        except (OSError, ValueError, AttributeError):
            return None
        return region if isinstance(region, int) else None

    def _save(self, region: int | None) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(f".{os.getpid()}.{time.monotonic_ns()}.tmp")
        tmp.write_text(json.dumps({"region": region}) + "\n")
        os.replace(tmp, self.state_file)
