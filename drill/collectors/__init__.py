"""Per-service figures for drill verify, measured against ground truth after the load.

One module per drill judges its services; this package maps each service to its judge.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from drill.collectors.chain import collect_chain, collect_stock, probe_chain
from drill.collectors.feed import collect_feed, snapshot_feed
from drill.collectors.ledger import collect_ledger
from drill.collectors.truth import load_acted, read_truth, triggers_acted
from drill.native import LabConfig

__all__ = ["COLLECTORS", "PROBES", "SNAPSHOTS", "load_acted", "read_truth", "triggers_acted"]

# Called after the load with the service's URL, the run's truth file and the lab.
Collector = Callable[[str, Path, LabConfig], dict[str, float]]
COLLECTORS: dict[str, Collector] = {
    "ledger": collect_ledger,
    "chain-a": collect_chain,
    "chain-c": collect_stock,
    "feed": collect_feed,
}
# Steady-state probes beyond /readyz: None when the service does real work, else what to do.
Probe = Callable[[str], str | None]
PROBES: dict[str, Probe] = {"chain-a": probe_chain}
# Called with the service's URL and the run directory just before the load starts.
Snapshot = Callable[[str, Path], None]
SNAPSHOTS: dict[str, Snapshot] = {"feed": snapshot_feed}
