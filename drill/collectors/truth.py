"""What every judge shares: the load test's ground truth and the triggers that acted."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

# The provider's published rule for how profiles change: the judge recomputes it.


def read_truth(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def triggers_acted(base_url: str) -> Counter[str]:
    """How often each trigger took its path in one service so far (GET /drill/triggers)."""
    # Generous: a service whose event loop is stalled answers once it has worked off its queue.
    response = httpx.get(f"{base_url}/drill/triggers", timeout=180, trust_env=False)
    response.raise_for_status()
    return Counter({flag: sum(variants.values()) for flag, variants in response.json().items()})


def load_acted(path: Path) -> Counter[str]:
    """What the load generator's own flag reads acted on (flags read by Locust's users)."""
    if not path.exists():
        return Counter()
    return Counter({flag: int(n) for flag, n in json.loads(path.read_text()).items()})
