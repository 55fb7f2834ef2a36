"""The feed and profiles as native lab processes: peers wired by URL, reseeding from the CLI."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from drill import admin, native
from drill.native import LabConfig, free_port_offset
from tests.conftest import REPO_ROOT
from tests.labs import run_drill

pytestmark = pytest.mark.lab


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabConfig]:
    """feed and profiles on free ports, SQLite under tmp_path, stopped afterwards."""
    for key in ("DATABASE_URL", "REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    config = LabConfig(root=REPO_ROOT, state_dir=tmp_path / "state", port_offset=free_port_offset())
    try:
        native.up(config, only=["feed", "profiles"])
        yield config
    finally:
        native.down(config)


def drill(config: LabConfig, *args: str) -> subprocess.CompletedProcess[str]:
    return run_drill(config.root, config.env(), *args, timeout=120)


def test_feed_reaches_profiles_on_this_labs_port(lab: LabConfig) -> None:
    """The native lab hands feed the profiles URL of the same lab (port offset included)."""
    feed = lab.url(native.SERVICES["feed"])
    reply = httpx.get(f"{feed}/feed/3", timeout=30)
    assert reply.status_code == 200
    assert len(reply.json()["posts"]) == 10
    metrics = httpx.get(f"{lab.url(native.SERVICES['profiles'])}/metrics", timeout=10).text
    assert 'profiles_served_total{endpoint="single"} 10.0' in metrics


def test_reseeding_as_the_instructor_runs_in_the_background(lab: LabConfig) -> None:
    """drill.admin.reseed_feed sends the instructor's token, follows the 202 job to its end;
    without the token the running feed refuses and keeps its data."""
    feed = lab.url(native.SERVICES["feed"])
    refused = httpx.post(f"{feed}/admin/seed", json={"seed": 8, "users": 1200}, timeout=30)
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    token = admin.instructor_token(lab)
    assert (lab.state_dir / "program" / "instructor.sha256").stat().st_mode & 0o777 == 0o644
    result = admin.reseed_feed(feed, token, seed=8, users=1200)
    assert result["users"] == 1200
    users = httpx.get(f"{feed}/users", params={"limit": 5000}, timeout=30).json()["data"]
    assert len(users) == 1200


def test_drill_seed_reseeds_the_running_feed(lab: LabConfig) -> None:
    """`drill seed --seed 8 --users 1200` replaces the data; bad values and no lab exit 2."""
    done = drill(lab, "seed", "--seed", "8", "--users", "1200")
    assert done.returncode == 0, done.stderr
    assert "feed reseeded from seed 8: 1,200 users" in done.stdout
    feed = lab.url(native.SERVICES["feed"])
    users = httpx.get(f"{feed}/users", params={"limit": 5000}, timeout=30).json()["data"]
    assert len(users) == 1200
    assert drill(lab, "seed", "--users", "5").returncode == 2
    native.down(lab)
    stopped = drill(lab, "seed")
    assert stopped.returncode == 2
    assert "feed is not reachable" in stopped.stderr
