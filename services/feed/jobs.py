"""Reseeds run in the background: 50,000 users take longer than any client should wait."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel

from services.feed.models import SeedPublic

log = logging.getLogger("feed.seed")

# Jobs remembered for their status; older ones are forgotten, one reseed runs at a time.
KEPT_JOBS = 20


class SeedJobPublic(BaseModel):
    id: str
    seed: int
    users: int
    status: Literal["running", "done", "failed"]
    result: SeedPublic | None = None
    detail: str | None = None


class Busy(Exception):
    def __init__(self, running: SeedJobPublic) -> None:
        super().__init__(running.id)
        self.running = running


class SeedJobs:
    """One reseed at a time, on its own thread; the status of the last few, by id."""

    def __init__(self) -> None:
        self._jobs: dict[str, SeedJobPublic] = {}
        self._lock = threading.Lock()

    def start(self, seed: int, users: int, run: Callable[[], SeedPublic]) -> SeedJobPublic:
        """Start `run` as a job; Busy if a reseed is still running (it would wipe this one)."""
        with self._lock:
            for job in self._jobs.values():
                if job.status == "running":
                    raise Busy(job)
            job = SeedJobPublic(id=uuid.uuid4().hex[:16], seed=seed, users=users, status="running")
            self._jobs[job.id] = job
            while len(self._jobs) > KEPT_JOBS:
                del self._jobs[next(iter(self._jobs))]
        # A daemon: a lab stopped mid-reseed rolls the transaction back instead of waiting.
        worker = threading.Thread(target=self._run, args=(job.id, run), daemon=True)
        worker.start()
        return job.model_copy()

    def _run(self, job_id: str, run: Callable[[], SeedPublic]) -> None:
        try:
            result = run()
        except Exception as exc:  # the job reports its failure; the log keeps the traceback
            log.exception("reseed %s failed", job_id)
            self._finish(job_id, status="failed", detail=f"{type(exc).__name__}: {exc}")
        else:
            self._finish(job_id, status="done", result=result)

    def _finish(self, job_id: str, **changes: object) -> None:
        with self._lock:
            if job_id in self._jobs:
                self._jobs[job_id] = self._jobs[job_id].model_copy(update=changes)

    def get(self, job_id: str) -> SeedJobPublic | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else job.model_copy()
