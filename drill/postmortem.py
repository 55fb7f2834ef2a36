"""`drill postmortem --team NAME SCENARIO`: a blameless post-mortem drafted from what happened.

The template is `docs/templates/postmortem.md` (string.Template: `$timeline`, `$impact`, ...).
The timeline comes from the program's journal: phases, the scenario's triggers and the decoys,
hints, the team's claims, hints and verify runs, reveal mode. The impact and resolution figures
come from the team's verify runs: those it submitted to the runner (workshop.db on the
instructor's machine) and this lab's own (`.drill/runs/*/result.json`). The sections only the
team can write stay prompts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import Any

from drill.native import LabConfig
from drill.program.journal import Event, Journal, journal_path
from drill.scenarios import Program, Scenario, load_program

TEMPLATE = Path("docs") / "templates" / "postmortem.md"
TEAM_KINDS = ("claim_filed", "claim_judged", "hint_unlocked", "verify_submitted")


class PostmortemError(Exception):
    """The draft cannot be written; the message says why."""


@dataclass(frozen=True)
class Run:
    """One verify run of the scenario: when, whether it passed, and its checks."""

    at: str
    passed: bool
    baseline: bool
    checks: tuple[dict[str, Any], ...]
    source: str


def _clock(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%H:%M:%S")


def timeline(events: Iterable[Event], scenario: Scenario, name: str, team: str) -> list[str]:
    """One Markdown list line per event that matters to this team and scenario, in order."""
    triggers = {trigger.flag for trigger in scenario.triggers}
    lines = []
    for event in events:
        text = _describe(event, triggers, name, team)
        if text is not None:
            at = event.fields.get("at")
            when = _clock(event.ts) + (f" [{at}]" if isinstance(at, str) else "")
            lines.append(f"- **{when}** {text}")
    return lines


def _describe(event: Event, triggers: set[str], name: str, team: str) -> str | None:
    f = event.fields
    kind = event.kind
    if kind in TEAM_KINDS and (f.get("team") != team or f.get("scenario") != name):
        return None
    if kind == "program_started":
        return f"The program started (seed {f.get('seed')})."
    if kind == "phase_changed" and f.get("entry"):
        return f"{str(f.get('type', 'phase')).capitalize()}: {f['entry']}."
    if kind == "flag_changed":
        flag = str(f.get("flag", ""))
        variant = f.get("variant")
        share = f" for {f['percent']:g}% of requests" if f.get("percent") is not None else ""
        if flag in triggers:
            return f"Trigger `{flag}` = {variant}{share} (by {event.by})."
        if flag.startswith("generic.") and variant != "off":
            where = f.get("where") or {}
            return f"A decoy: `{flag}` on {where.get('service', 'a bystander')}{share}."
        return None
    if kind == "hint_released" and f.get("scenario") == name:
        return f"Hint {f.get('hint')} released to the room."
    if kind == "reveal_changed":
        return f"Reveal mode {f.get('reveal')}."
    if kind == "claim_filed":
        ids = ", ".join(f"`{t}`" for t in f.get("trace_ids") or []) or "no trace ids"
        return f"The team claimed the root cause (claim {f.get('claim')}; {ids}): {f.get('text')}"
    if kind == "claim_judged":
        note = f": {f['note']}" if f.get("note") else ""
        return f"The instructor {f.get('verdict')} claim {f.get('claim')}{note}."
    if kind == "hint_unlocked":
        return f"The team took hint {f.get('hint')} ({f.get('cost')} points)."
    if kind == "verify_submitted":
        what = "baseline run" if f.get("baseline") else "verify run"
        return f"A {what} was submitted: {f.get('verdict')}."
    if kind == "verify_run" and f.get("scenario") == name:
        return f"`drill verify {name}` on this lab: {f.get('verdict')} ({event.by})."
    if kind == "program_stopped":
        return f"The program ended ({f.get('reason')})."
    return None


def local_runs(state_dir: Path, name: str) -> list[Run]:
    runs = []
    for path in sorted((state_dir / "runs").glob("*/result.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if result.get("scenario") != name:
            continue
        runs.append(
            Run(
                str(result.get("started_at", "")),
                bool(result.get("passed")),
                bool(result.get("baseline")),
                tuple(result.get("checks", [])),
                str(path),
            )
        )
    return runs


def submitted_runs(state_dir: Path, program: Program, team: str, name: str) -> list[Run]:
    database = state_dir / "program" / "workshop.db"
    if not database.exists():
        return []
    from drill.program.teams import Workshop

    workshop = Workshop(database.parent, program, Journal(journal_path(state_dir)))
    return [
        Run(run["submitted_at"], run["passed"], run["baseline"], tuple(run["checks"]), "runner")
        for run in workshop.verify_runs(team)
        if run["scenario"] == name
    ]


def accepted_claim(state_dir: Path, program: Program, team: str, name: str) -> str | None:
    database = state_dir / "program" / "workshop.db"
    if not database.exists():
        return None
    from drill.program.teams import Workshop

    workshop = Workshop(database.parent, program, Journal(journal_path(state_dir)))
    for claim in workshop.claims(team):
        if claim.scenario == name and claim.status == "accepted":
            return claim.text
    return None


def _figures(run: Run) -> dict[str, tuple[str, Any]]:
    return {str(c.get("figure")): (str(c.get("name")), c.get("value")) for c in run.checks}


def _value(value: Any) -> str:
    if isinstance(value, int | float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "-"


def impact(runs: list[Run]) -> tuple[str, str]:
    """(impact, resolution): the first failing run's figures, and the first passing one's
    against them. A team without runs gets a line that says where they would come from."""
    judged = [run for run in runs if not run.baseline]
    failing = next((run for run in judged if not run.passed), None)
    passing = next((run for run in judged if run.passed), None)
    if failing is None and passing is None:
        note = "*No verify run of this scenario was found (submitted or under `.drill/runs/`).*"
        return note, note
    rows = ["| check | before (failing run) | after (passing run) |", "|---|---|---|"]
    before = _figures(failing) if failing else {}
    after = _figures(passing) if passing else {}
    for figure in dict.fromkeys([*before, *after]):
        name = (before.get(figure) or after.get(figure) or ("", None))[0]
        rows.append(
            f"| {name} (`{figure}`) | {_value(before.get(figure, ('', None))[1])} "
            f"| {_value(after.get(figure, ('', None))[1])} |"
        )
    table = "\n".join(rows)
    first = f"The failing run ({failing.at}, {failing.source})" if failing else "No failing run"
    fixed = (
        f"The fix was verified at {passing.at} ({passing.source})."
        if passing
        else "*No passing verify run yet.*"
    )
    return f"{first}, and the fix beside it:\n\n{table}", fixed


def draft(config: LabConfig, team: str, name: str, now: datetime | None = None) -> str:
    program = load_program(config.root / "scenarios.yaml")
    scenario = program.scenario(name)
    template_path = config.root / TEMPLATE
    try:
        template = Template(template_path.read_text())
    except OSError as exc:
        raise PostmortemError(f"cannot read the template {template_path}: {exc}") from None
    journal = Journal(journal_path(config.state_dir)).read()
    lines = timeline(journal.events, scenario, name, team)
    runs = submitted_runs(config.state_dir, program, team, name)
    runs += local_runs(config.state_dir, name)
    impact_text, resolution = impact(runs)
    claim = accepted_claim(config.state_dir, program, team, name)
    return template.safe_substitute(
        title=scenario.title,
        team=team,
        scenario=name,
        written=(now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC"),
        summary=" ".join(scenario.summary.split()),
        impact=impact_text,
        timeline="\n".join(lines) or "*The journal has no events for this scenario.*",
        root_cause=f"The team's accepted claim: {claim}" if claim else "*No accepted claim.*",
        resolution=resolution,
    )
