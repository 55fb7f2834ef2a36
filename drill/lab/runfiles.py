"""The native lab's files under the state dir: run records, lab.json, logs, atomic JSON."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LAB_FILE = "lab.json"
READY_PATH = "/readyz"
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class RunRecord:
    """What a run file says about one started service."""

    name: str
    pid: int
    port: int
    url: str
    app: str  # what in its command line marks the process as the one drill started
    root: str
    started_at: str
    ready_path: str = READY_PATH


def write_record(run_dir: Path, record: RunRecord) -> None:
    """The run file of record: <run_dir>/<name>.json (the name is the file's)."""
    payload = {k: v for k, v in asdict(record).items() if k != "name"}
    write_json(run_dir / f"{record.name}.json", payload)


def read_record(path: Path) -> RunRecord | None:
    """The record a run file holds, or None when it is unreadable or names a pid never ours."""
    data = read_json(path)
    if not isinstance(data, dict):
        return None
    try:
        record = RunRecord(
            name=path.stem,
            pid=int(data["pid"]),
            port=int(data["port"]),
            url=str(data["url"]),
            app=str(data["app"]),
            root=str(data["root"]),
            started_at=str(data["started_at"]),
            ready_path=str(data.get("ready_path", READY_PATH)),
        )
    except (KeyError, TypeError, ValueError):
        return None
    # kill(0) and kill(-1) signal whole groups, and pid 1 is init: never take those from a file.
    return record if record.pid > 1 else None


def read_json(path: Path) -> Any:
    """The JSON at path, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: Any) -> None:
    """Write data as JSON atomically (temp file plus rename)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write text atomically (temp file plus rename)."""
    # Readers (status, verify, the runner every tick) see the old file or the new one, never half.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def size(path: Path) -> int:
    """The file's size, 0 when it does not exist yet."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def tail_text(path: Path, offset: int) -> str:
    """What a service's log said since offset, as a paragraph for an error message."""
    lines = tail(path, offset)
    if not lines:
        return f"Its log {path} is empty."
    body = "\n".join(f"  {line}" for line in lines)
    return f"Last {len(lines)} lines of {path}:\n{body}"


def tail(path: Path, offset: int, count: int = LOG_TAIL_LINES) -> list[str]:
    """The last count lines written to path after offset."""
    # Only what this start wrote: the log is appended to across runs.
    try:
        with open(path, "rb") as handle:
            handle.seek(max(offset, size(path) - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-count:]
