"""The report's own probe of the running feed: the seed's table, measured now.

For the readers who follow 10, 100 and 1,000 accounts (seed users 3, 2 and 1: the seed's
anchors, services/feed/seed.py), a few timeline reads one after the other, and the feed's own
`db_queries_per_request` and `http_client_calls_per_request` histograms read before and after
each reader's reads: statements and external calls per request, and p50/p95 of the reads.

Every probe is kept in `<state>/report/feed-probes.jsonl`, because a fix replaces the code it
measured: the report's "before" is the last probe taken before the fix was deployed.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from drill import native
from drill.report.model import Probe, ProbeRow, Window

# (user id, followees in the seed): services/feed/seed.py ANCHORS, for every seed.
READERS = ((3, 10), (2, 100), (1, 1000))
READS = 3
ROUTE = "/feed/{user_id}"
# A shipped read waits for ten profile calls in a row; a stalled feed answers after its queue.
READ_TIMEOUT_S = 30.0
_HISTOGRAMS = {"db": "db_queries_per_request", "calls": "http_client_calls_per_request"}


def probes_path(state_dir: Path) -> Path:
    return state_dir / "report" / "feed-probes.jsonl"


def _nearest_rank(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def read_metrics(text: str) -> tuple[dict[str, tuple[float, float]], float | None]:
    """(sum and count of each work histogram for the timeline route, the process start)."""
    found = dict.fromkeys(_HISTOGRAMS, (0.0, 0.0))
    started: float | None = None
    for family in text_string_to_metric_families(text):
        if family.name == "process_start_time_seconds":
            started = family.samples[0].value if family.samples else None
        for key, name in _HISTOGRAMS.items():
            if family.name != name:
                continue
            total, count = found[key]
            for sample in family.samples:
                if sample.labels.get("route") != ROUTE:
                    continue
                if sample.name == f"{name}_sum":
                    total = sample.value
                elif sample.name == f"{name}_count":
                    count = sample.value
            found[key] = (total, count)
    return found, started


def _scrape(client: httpx.Client) -> tuple[dict[str, tuple[float, float]], float | None]:
    # A request's counts are observed just after its response is sent: let the last one land.
    time.sleep(0.2)
    response = client.get("/metrics", timeout=READ_TIMEOUT_S)
    response.raise_for_status()
    return read_metrics(response.text)


def _followees(client: httpx.Client) -> dict[int, int]:
    response = client.get("/users", params={"limit": max(uid for uid, _ in READERS)})
    response.raise_for_status()
    return {int(u["id"]): int(u["following"]) for u in response.json()["data"]}


def _reader(client: httpx.Client, user_id: int, followees: int, reads: int) -> ProbeRow:
    before, _ = _scrape(client)
    times: list[float] = []
    failed = 0
    for _ in range(reads):
        started = time.perf_counter()
        try:
            ok = client.get(f"/feed/{user_id}", params={"limit": 10}).status_code == 200
        except httpx.TimeoutException:
            ok = False
        times.append((time.perf_counter() - started) * 1000)
        failed += not ok
    after, _ = _scrape(client)
    observed = after["db"][1] - before["db"][1]

    def per_request(key: str) -> float:
        count = after[key][1] - before[key][1]
        return (after[key][0] - before[key][0]) / count if count > 0 else math.nan

    return ProbeRow(
        user_id=user_id,
        followees=followees,
        reads=reads,
        failed=failed,
        statements=per_request("db"),
        calls=per_request("calls"),
        p50_ms=_nearest_rank(times, 0.50),
        p95_ms=_nearest_rank(times, 0.95),
        observed=int(observed),
    )


def live_trigger_flags(state_dir: Path) -> dict[str, str]:
    """The feed's and the profiles API's flags that are not at their default, as live now."""
    from faults import FlagStateError, describe, live_flags, load_catalog

    try:
        catalog = load_catalog()
        live = live_flags(state_dir, catalog)
    except (FlagStateError, OSError, ValueError):
        return {}
    shown = {}
    for key, flag in live.items():
        if not key.startswith(("feed.", "profiles.")):
            continue
        variant, _, share = describe(flag.definition)
        if variant != catalog[key].default_variant:
            shown[key] = variant + (f" for {share:g}%" if share is not None else "")
    return shown


def run_probe(
    config: native.LabConfig, reads: int = READS, now: datetime | None = None
) -> tuple[Probe | None, str | None]:
    """Probe the lab's feed and keep the result; (the probe, or None and why not)."""
    url = native.endpoints(config).get("feed")
    if url is None:
        return None, "this lab has no feed service"
    with httpx.Client(base_url=url, timeout=READ_TIMEOUT_S, trust_env=False) as client:
        try:
            if client.get("/readyz", timeout=3).status_code != 200:
                return None, f"the feed at {url} is not ready: no probe this time"
            followees = _followees(client)
            _, feed_started = _scrape(client)
            rows = tuple(
                _reader(client, uid, followees.get(uid, seeded), reads) for uid, seeded in READERS
            )
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            return None, f"the feed at {url} could not be probed ({type(exc).__name__}: {exc})"
    probe = Probe(
        at=now or datetime.now(UTC),
        url=url,
        rows=rows,
        flags=live_trigger_flags(config.state_dir),
        feed_started=feed_started,
    )
    keep(config.state_dir, probe)
    return probe, None


def keep(state_dir: Path, probe: Probe) -> None:
    path = probes_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(probe.as_json()) + "\n")


def read_probes(state_dir: Path, window: Window) -> tuple[Probe, ...]:
    """The probes kept within the window, oldest first; unreadable lines are skipped."""
    found: list[Probe] = []
    try:
        lines = probes_path(state_dir).read_text().splitlines()
    except OSError:
        return ()
    for line in lines:
        try:
            document: Any = json.loads(line)
            probe = Probe.from_json(document)
        except (ValueError, KeyError, TypeError):
            continue
        if window.holds(probe.at):
            found.append(probe)
    return tuple(sorted(found, key=lambda p: p.at))
