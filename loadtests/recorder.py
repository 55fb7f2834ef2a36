"""Raw samples and ground truth, written by Locust for drill verify to read afterwards.

Locust's own percentiles are rounded into buckets; verify computes them from these lines.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, TextIO

from locust import events

from faults import Flags


class _Lines:
    """Append-only line file, opened lazily, flushed when the test stops."""

    def __init__(self, env_var: str) -> None:
        self.path = os.environ.get(env_var)
        self._handle: TextIO | None = None
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        if not self.path:
            return
        with self._lock:
            if self._handle is None:
                self._handle = open(self.path, "a", buffering=1 << 16)
            self._handle.write(line + "\n")

    def flush(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.flush()


samples = _Lines("DRILL_SAMPLES")
ground_truth = _Lines("DRILL_GROUND_TRUTH")
RUN_ID = os.environ.get("DRILL_RUN_ID", "local")
# How long a client waits for an answer: the judge's setting (scenarios.yaml), not the user's.
CLIENT_TIMEOUT_S = float(os.environ.get("DRILL_CLIENT_TIMEOUT_S") or 0) or None


def record_truth(entry: dict[str, Any]) -> None:
    ground_truth.write(json.dumps(entry, sort_keys=True))


@events.request.add_listener
def _on_request(
    request_type: str,
    name: str,
    response_time: float,
    exception: BaseException | None = None,
    start_time: float | None = None,
    **_kwargs: Any,
) -> None:
    # method, name, milliseconds, ok, start (epoch s): one line per request, failures included.
    # The start lets verify leave a scenario's warm-up out of the judged samples.
    started = f"\t{start_time:.3f}" if start_time is not None else ""
    samples.write(f"{request_type}\t{name}\t{response_time:.3f}\t{0 if exception else 1}{started}")


_tracked_flags: list[Flags] = []


def track_flags(flags: Flags) -> None:
    """Report what this process's own flag reads acted on (flags read by the load test)."""
    _tracked_flags.append(flags)


def _write_acted() -> None:
    """Trigger flags that this process read and acted on: drill verify's proof they acted."""
    path = os.environ.get("DRILL_ACTED")
    if not path:
        return
    acted: dict[str, int] = {}
    for flags in _tracked_flags:
        for flag, variants in flags.acted().items():
            acted[flag] = acted.get(flag, 0) + sum(variants.values())
    with open(path, "w") as handle:
        json.dump(acted, handle)


@events.test_start.add_listener
def _on_test_start(**_kwargs: Any) -> None:
    # When the load really began: Locust takes a moment to start, longer on a slow machine,
    # and verify judges from here rather than from when it launched Locust.
    path = os.environ.get("DRILL_LOAD_STARTED")
    if path:
        with open(path, "w") as handle:
            handle.write(f"{time.time():.3f}\n")


@events.test_stop.add_listener
def _on_test_stop(**_kwargs: Any) -> None:
    samples.flush()
    ground_truth.flush()
    _write_acted()


@events.quit.add_listener
def _on_quit(**_kwargs: Any) -> None:
    samples.flush()
    ground_truth.flush()
