"""The scoreboard: per team and scenario, time to root cause, hints, the fix verified, points.

`board(workshop)` computes it from the store; `room_board` leaves out which scenario each
result is on until reveal mode (a team's accepted claim in the dark room names the culprit);
`render_html` draws the page the projector shows, which reloads itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from html import escape
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from drill.program.teams import Workshop

REFRESH_S = 10
HIDDEN = "per-scenario results wait for reveal mode"


def _best(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The team's best passing run on a scenario: the lowest latency figure, then the earliest."""

    def latency(run: dict[str, Any]) -> float:
        values = [
            c["value"] for c in run["checks"] if c["kind"] == "latency" and c["value"] is not None
        ]
        return min(values) if values else float("inf")

    passing = [run for run in runs if run["passed"] and not run["baseline"]]
    if not passing:
        return None
    return min(passing, key=lambda run: (latency(run), run["id"]))


def board(workshop: Workshop, now: datetime | None = None) -> dict[str, Any]:
    """The whole scoreboard, every scenario named (the instructor's view)."""
    now = now or datetime.now(UTC)
    scoring = workshop.program.scoring
    live = workshop.went_live()
    claims = workshop.claims()
    hints = workshop.hints_taken()
    runs = workshop.verify_runs()
    teams = []
    for team in workshop.teams():
        scenarios: dict[str, Any] = {}
        for name in workshop.program.agenda_scenarios():
            mine = [c for c in claims if c.team == team and c.scenario == name]
            accepted = next((c for c in mine if c.status == "accepted"), None)
            taken = [h for h in hints if h["team"] == team and h["scenario"] == name]
            tried = [r for r in runs if r["team"] == team and r["scenario"] == name]
            if not (mine or taken or tried):
                continue
            # Program time, so a rehearsal at --speed N judges the dark room as the day would.
            since = live.get(name)
            minutes = None
            if accepted is not None and since is not None and accepted.program_at is not None:
                minutes = round(max(0.0, accepted.program_at - since[1]) / 60, 1)
            in_dark_room = minutes is not None and minutes <= scoring.dark_room_minutes
            first_pass = next((r for r in tried if r["passed"] and not r["baseline"]), None)
            best = _best(tried)
            hint_points = sum(h["cost"] for h in taken)
            points = -hint_points
            if accepted is not None:
                points += scoring.root_cause + (scoring.dark_room_bonus if in_dark_room else 0)
            if first_pass is not None:
                points += scoring.fix_verified
            scenarios[name] = {
                "went_live": since[0] if since else None,
                "claims": len(mine),
                "root_cause_at": accepted.filed_at if accepted else None,
                "minutes_to_root_cause": minutes,
                "in_dark_room": in_dark_room,
                "hints_used": len(taken),
                "hint_points": hint_points,
                "fix_verified_at": first_pass["submitted_at"] if first_pass else None,
                "verify_runs": len(tried),
                "best_run": None
                if best is None
                else {
                    "id": best["id"],
                    "submitted_at": best["submitted_at"],
                    "figures": {c["figure"]: c["value"] for c in best["checks"]},
                },
                "points": points,
            }
        teams.append(
            {
                "team": team,
                "points": sum(s["points"] for s in scenarios.values()),
                "root_causes": sum(1 for s in scenarios.values() if s["root_cause_at"]),
                "hints_used": sum(s["hints_used"] for s in scenarios.values()),
                "fixes_verified": sum(1 for s in scenarios.values() if s["fix_verified_at"]),
                "scenarios": scenarios,
            }
        )
    teams.sort(key=lambda t: (-t["points"], t["team"]))
    return {
        "generated_at": now.astimezone(UTC).isoformat(timespec="seconds"),
        "scoring": scoring.model_dump(),
        "teams": teams,
    }


def room_board(full: dict[str, Any], revealed: bool) -> dict[str, Any]:
    """What the room sees: before reveal mode, each team's totals but no scenario names."""
    if revealed:
        return {**full, "revealed": True}
    teams = [{k: v for k, v in team.items() if k != "scenarios"} for team in full["teams"]]
    return {**full, "teams": teams, "revealed": False, "hidden": HIDDEN}


def _figure(name: str, value: Any) -> str:
    if value is None:
        return f"{name} -"
    number = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{name} {number}"


def render_html(shown: dict[str, Any], program_line: str) -> str:
    """The projected scoreboard: a table of teams, server-rendered, reloading every 10 s."""
    rows = []
    for rank, team in enumerate(shown["teams"], start=1):
        cells = [
            f"<td class='rank'>{rank}</td>",
            f"<td class='team'>{escape(team['team'])}</td>",
            f"<td class='points'>{team['points']}</td>",
            f"<td>{team['root_causes']}</td>",
            f"<td>{team['hints_used']}</td>",
            f"<td>{team['fixes_verified']}</td>",
        ]
        details = []
        for name, result in (team.get("scenarios") or {}).items():
            parts = [f"<b>{escape(name)}</b>"]
            if result["minutes_to_root_cause"] is not None:
                mark = " (dark room)" if result["in_dark_room"] else ""
                parts.append(f"root cause in {result['minutes_to_root_cause']:g} min{mark}")
            parts.append(f"{result['hints_used']} hint(s)")
            if result["fix_verified_at"]:
                parts.append(f"fix verified {escape(result['fix_verified_at'][11:16])} UTC")
            if result["best_run"]:
                figures = ", ".join(_figure(k, v) for k, v in result["best_run"]["figures"].items())
                parts.append(f"<span class='figures'>{escape(figures)}</span>")
            details.append("<li>" + " &middot; ".join(parts) + "</li>")
        detail = f"<ul>{''.join(details)}</ul>" if details else ""
        cells.append(f"<td class='details'>{detail}</td>")
        rows.append(f"<tr data-team='{escape(team['team'])}'>{''.join(cells)}</tr>")
    hidden = f"<p class='hidden'>{escape(shown['hidden'])}</p>" if shown.get("hidden") else ""
    updated = escape(shown["generated_at"][11:19])
    empty = "" if rows else "<p class='empty'>No teams yet: drill program teams add NAME...</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>3 A.M. Drill: scoreboard</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #111; color: #eee; margin: 2rem; }}
h1 {{ margin: 0 0 .3rem; }} .program {{ color: #aaa; margin-bottom: 1rem; }}
table {{ border-collapse: collapse; width: 100%; font-size: 1.4rem; }}
th, td {{ padding: .4rem .8rem; border-bottom: 1px solid #333; text-align: left; }}
td {{ vertical-align: top; }}
td.points {{ font-weight: bold; color: #7fd17f; }} .figures {{ color: #aaa; font-size: 1rem; }}
ul {{ margin: 0; padding-left: 1rem; font-size: 1.1rem; }} .hidden, .empty {{ color: #aaa; }}
</style></head><body>
<h1>Scoreboard</h1>
<div class="program">{escape(program_line)} &middot; updated {updated} UTC</div>
<table><thead><tr><th>#</th><th>team</th><th>points</th><th>root causes</th><th>hints</th>
<th>fixes verified</th><th>details</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
{hidden}{empty}
</body></html>
"""


class TeamCollector:
    """The scoreboard as Prometheus metrics, read at each scrape (for the Workshop dashboard).

    Totals per team always; per scenario only when `shows_all()` (reveal mode), as on the page.
    """

    def __init__(self, workshop: Workshop, shows_all: Callable[[], bool]) -> None:
        self.workshop = workshop
        self.shows_all = shows_all

    def collect(self) -> Iterator[Metric]:
        full = board(self.workshop)
        totals = {
            "points": GaugeMetricFamily(
                "drill_team_points", "Root causes, bonus and fixes less hints", labels=["team"]
            ),
            "root_causes": GaugeMetricFamily(
                "drill_team_root_causes", "Accepted root-cause claims", labels=["team"]
            ),
            "hints_used": GaugeMetricFamily(
                "drill_team_hints_used", "Hints the team unlocked", labels=["team"]
            ),
            "fixes_verified": GaugeMetricFamily(
                "drill_team_fixes_verified", "Scenarios with a passing submitted verify run",
                labels=["team"],
            ),
        }  # fmt: skip
        minutes = GaugeMetricFamily(
            "drill_team_root_cause_minutes",
            "Program minutes from the scenario going live to the accepted claim (after reveal)",
            labels=["team", "scenario"],
        )
        verified = GaugeMetricFamily(
            "drill_team_fix_verified",
            "1 once a passing verify run was submitted (after reveal)",
            labels=["team", "scenario"],
        )
        figures = GaugeMetricFamily(
            "drill_team_verify_figure",
            "The figures of the team's best passing verify run (after reveal)",
            labels=["team", "scenario", "figure"],
        )
        shows_all = self.shows_all()
        for team in full["teams"]:
            for key, family in totals.items():
                family.add_metric([team["team"]], float(team[key]))
            if not shows_all:
                continue
            for name, result in team["scenarios"].items():
                if result["minutes_to_root_cause"] is not None:
                    minutes.add_metric([team["team"], name], result["minutes_to_root_cause"])
                verified.add_metric([team["team"], name], 1.0 if result["fix_verified_at"] else 0.0)
                for figure, value in ((result["best_run"] or {}).get("figures") or {}).items():
                    if value is not None:
                        figures.add_metric([team["team"], name, figure], value)
        yield from totals.values()
        yield from (minutes, verified, figures)
