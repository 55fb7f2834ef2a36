"""The slow-machine mode: pin the lab and Locust to a set of CPUs (a test and benchmark setting).

The slowest machine a verdict must hold on is a hosted CI runner: two vCPUs, each about half
as fast as a laptop core. One core of a laptop carries about as much work, so running every
lab process and Locust on one CPU reproduces it. `DRILL_PIN_CPUS=0` (a `taskset` CPU list)
turns it on; the drill tests, `.ci/run` and the benchmarks honour it.
"""

from __future__ import annotations

import os
import shutil

PIN_ENV = "DRILL_PIN_CPUS"


def pinned_cpus() -> str | None:
    """The CPU list the lab is pinned to, or None when it runs unpinned."""
    cpus = os.environ.get(PIN_ENV, "").strip()
    return cpus or None


def pinned(command: list[str]) -> list[str]:
    """The command under `taskset -c CPUS` in the slow-machine mode, else unchanged."""
    cpus = pinned_cpus()
    if cpus is None:
        return command
    taskset = shutil.which("taskset")
    if taskset is None:
        raise RuntimeError(f"{PIN_ENV}={cpus} needs taskset (Debian: util-linux)")
    return [taskset, "-c", cpus, *command]
