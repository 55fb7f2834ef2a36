"""The instructor's live view of the program: `drill program status [--watch]`."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from drill.agenda import format_clock
from drill.program.control import Status
from drill.program.room import HIDDEN, revealed


def _left(seconds: float) -> str:
    # Rounded up: "0:01 left" until the entry really ends.
    minutes, secs = divmod(math.ceil(max(0.0, seconds)), 60)
    return f"{minutes}:{secs:02d}"


def render(status: Status, room: bool = False) -> RenderableType:
    """One panel: the entry, time left, what comes next, triggers, decoys, the break's questions.

    `room`: the panel for the projector; the culprit, triggers and decoys are left out until
    reveal mode is on (drill.program.room), and so is the program layer of a stopped run.
    """
    runner = f"runner pid {status.pid}" if status.pid else "[red]no runner is running[/red]"
    snapshot = status.snapshot
    if snapshot is None:
        lines = [Text.from_markup(f"No program is running ({runner}).")]
        if status.last_stop:
            lines.append(Text(f"Last run stopped {status.last_stop}."))
        lines.append(Text("Start one with: drill program start [--at H:MM] [--speed N]"))
        if status.program_flags and not room:
            lines.append(Text(f"Program flags still set: {', '.join(status.program_flags)}"))
        return Panel(Group(*lines), title="drill program")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    clock = f"{snapshot['at']} of {format_clock(snapshot['length'])}"
    clock += f", speed x{snapshot['speed']:g}" if snapshot["speed"] != 1 else ""
    clock += "  [yellow]PAUSED[/yellow]" if snapshot["paused"] else ""
    grid.add_row("clock", Text.from_markup(clock))
    if snapshot["entry"] is None:
        grid.add_row("now", "the program has finished")
    else:
        grid.add_row(snapshot["type"], Text(snapshot["entry"], style="bold cyan"))
        grid.add_row("time left", _left(snapshot["time_left"]))
    if snapshot["next"]:
        grid.add_row("next", f"{snapshot['next_type']}: {snapshot['next']}")
    if room and not revealed(snapshot):
        grid.add_row("culprit(s)", Text(HIDDEN, "dim"))
        grid.add_row("live triggers", Text(HIDDEN, "dim"))
        grid.add_row("decoys", Text(HIDDEN, "dim"))
    else:
        _secrets(grid, status, snapshot)
    _rest(grid, status, snapshot, runner)
    return Panel(grid, title=f"drill program (seed {snapshot['seed']})")


def _secrets(grid: Table, status: Status, snapshot: dict[str, Any]) -> None:
    grid.add_row("culprit(s)", ", ".join(snapshot["drawn"]) or "-")
    flags = status.program_flags
    triggers = ", ".join(
        f"{k}={v}" + (f"@{p:g}%" if p is not None else "") for k, (v, p) in flags.items()
    )
    grid.add_row("live triggers", triggers or "none")
    wanted = set(snapshot["flags"])
    if wanted != set(flags):
        grid.add_row("", Text("(the runner brings these to the plan on its next tick)", "dim"))
    decoys = ", ".join(
        f"{d['kind']} on {d['service']} until {d['end']}" for d in snapshot["decoys"]
    )
    grid.add_row("decoys", decoys or "none")


def _rest(grid: Table, status: Status, snapshot: dict[str, Any], runner: str) -> None:
    traffic = ", ".join(
        name + ("" if running else " (not running)") for name, running in status.traffic.items()
    )
    if not status.traffic_enabled:
        traffic = "off for this run (--no-traffic)"
    elif not traffic and snapshot["wanted_traffic"]:
        traffic = "starting: " + ", ".join(snapshot["wanted_traffic"])
    grid.add_row("traffic", traffic or "none")
    if snapshot["checkpoint"]:
        grid.add_row("checkpoint", Text(snapshot["checkpoint"], style="italic"))
    questions = snapshot["questions"] if snapshot["type"] == "break" else snapshot["next_questions"]
    if questions:
        where = "this break" if snapshot["type"] == "break" else "the coming break"
        grid.add_row(where, "\n".join(f"- {q}" for q in questions))
    grid.add_row("runner", Text.from_markup(runner))
