"""`drill postmortem`: the timeline is the journal's events in order, the figures are the team's
verify runs, and the sections only the team can write stay prompts."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drill.program.journal import Journal
from drill.program.teams import Workshop
from drill.scenarios import load_program
from tests.conftest import REPO_ROOT

PROGRAM = load_program(REPO_ROOT / "scenarios.yaml")
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SECTIONS = [
    "Summary", "Impact", "Timeline", "Detection", "Root cause", "Trigger", "Resolution",
    "What went well", "Where we were lucky", "Action items",
]  # fmt: skip


def at(minutes: float) -> datetime:
    return START + timedelta(minutes=minutes)


def a_day(state: Path) -> None:
    """The journal of a workshop morning, and red's claim, hint and runs in the store."""
    journal = Journal(state / "program" / "journal.jsonl")
    journal.append("program_started", "instructor", at(0), seed=2026, clock={})
    journal.append(
        "phase_changed", "runner", at(15), index=1, entry="1: the dark room", type="phase"
    )
    journal.append("flag_changed", "runner", at(15), flag="ledger.fx_conversion", variant="on",
                   percent=None, layer="program")  # fmt: skip
    journal.append("flag_changed", "runner", at(15), flag="chain.fraud_callback", variant="on",
                   percent=None, layer="program")  # fmt: skip
    journal.append("flag_changed", "runner", at(25), flag="generic.latency", variant="slow",
                   percent=20.0, layer="program", where={"service": "feed"})  # fmt: skip
    workshop = Workshop(state / "program", PROGRAM, journal)
    workshop.add_teams(["red", "blue"])
    workshop.note_live(["fp-drift"], 900.0, at(15))
    workshop.unlock_hint("red", "fp-drift", [], now=at(30))
    workshop.unlock_hint("blue", "fp-drift", [], now=at(31))
    claim = workshop.file_claim(
        "red", "fp-drift", "amounts are binary floats", ["ab" * 16], None, ["fp-drift"], {},
        program_at=2100.0, now=at(35),
    )  # fmt: skip
    workshop.judge(claim.id, "accept", "yes", now=at(36))
    checks = [
        {"name": "balances equal what clients were confirmed", "figure": "ledger.balance_drift",
         "kind": "invariant", "value": 7932.35, "passed": False},
        {"name": "posting is fast", "figure": "p95_ms", "kind": "latency", "value": 212.0,
         "passed": True},
    ]  # fmt: skip
    workshop.submit_verify(
        "red", {"scenario": "fp-drift", "passed": False, "checks": checks}, now=at(80)
    )
    fixed = [{**checks[0], "value": 0.0, "passed": True}, {**checks[1], "value": 141.0}]
    workshop.submit_verify(
        "red", {"scenario": "fp-drift", "passed": True, "checks": fixed}, now=at(95)
    )
    journal.append("reveal_changed", "runner", at(150), reveal="on")
    journal.append("program_stopped", "runner", at(180), reason="finished")


def test_the_draft_follows_the_journal_and_the_runs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    a_day(state)
    out = tmp_path / "pm.md"
    done = subprocess.run(
        [sys.executable, "-m", "drill.cli", "postmortem", "fp-drift", "--team", "red",
         "--out", str(out), "--root", str(REPO_ROOT)],
        env={"DRILL_STATE_DIR": str(state), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings == SECTIONS
    timeline = text.split("## Timeline")[1].split("## Detection")[0]
    entries = [line for line in timeline.splitlines() if line.startswith("- **")]
    expected = [
        "The program started",
        "Phase: 1: the dark room",
        "Trigger `ledger.fx_conversion` = on",
        "A decoy: `generic.latency` on feed for 20% of requests",
        "The team took hint 1 (10 points)",
        "The team claimed the root cause (claim 1; `" + "ab" * 16 + "`): amounts are binary",
        "The instructor accepted claim 1: yes",
        "A verify run was submitted: fail",
        "A verify run was submitted: pass",
        "Reveal mode on",
        "The program ended (finished)",
    ]
    assert len(entries) == len(expected), "\n".join(entries)
    for entry, words in zip(entries, expected, strict=True):
        assert words in entry, (entry, words)
    assert "chain.fraud_callback" not in timeline  # another scenario's trigger
    assert "blue" not in timeline.lower()  # another team's hint
    times = [entry.split("**")[1] for entry in entries]
    assert times == sorted(times) and times[0] == "09:00:00" and times[-1] == "12:00:00"
    assert "**09:35:00** The team claimed" in timeline
    impact = text.split("## Impact")[1].split("## Timeline")[0]
    assert (
        "| balances equal what clients were confirmed (`ledger.balance_drift`) | 7,932 | 0 |"
        in (impact)
    )
    assert "| posting is fast (`p95_ms`) | 212 | 141 |" in impact
    assert "The team's accepted claim: amounts are binary floats" in text
    assert "$" not in text.replace("$ ", "")  # every placeholder filled


def test_a_team_without_runs_gets_prompts_not_figures(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Journal(state / "program" / "journal.jsonl").append(
        "program_started", "instructor", START, seed=1, clock={}
    )
    out = tmp_path / "pm.md"
    done = subprocess.run(
        [sys.executable, "-m", "drill.cli", "postmortem", "n-plus-one", "--team", "teal",
         "--out", str(out), "--root", str(REPO_ROOT)],
        env={"DRILL_STATE_DIR": str(state), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "No verify run of this scenario was found" in text
    assert "*No accepted claim.*" in text
    bad = subprocess.run(
        [sys.executable, "-m", "drill.cli", "postmortem", "nope", "--team", "teal",
         "--root", str(REPO_ROOT)],
        env={"DRILL_STATE_DIR": str(state), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2 and "no scenario 'nope'" in bad.stderr
    assert not list(tmp_path.glob("postmortem-*"))


def test_the_pull_request_template_asks_for_the_evidence() -> None:
    template = (REPO_ROOT / ".github" / "pull_request_template.md").read_text()
    for heading in ("Root cause", "Evidence", "`drill verify` output", "Guardrails", "AI usage"):
        assert f"### {heading}" in template or f"## {heading}" in template, heading
    assert "What did it propose" in template
    spec = (REPO_ROOT / "docs" / "templates" / "spec.md").read_text()
    for rule in ("minor units", "idempotency key", "timeout", "retry budget", "breaker",
                 "No synchronous call cycles", "Batch it"):  # fmt: skip
        assert rule in spec, rule
