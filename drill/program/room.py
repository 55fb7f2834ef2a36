"""What the room may see of the program before reveal mode: no culprit, trigger or decoy.

The dark room is dark: participants find the culprit from the symptoms. Everything a
participant can reach (`GET /program`, the runner's metrics in Prometheus and Grafana, the
projected `drill program status --room`) leaves out which scenarios are live, the flags the
program sets and the decoys, until the post-mortem turns reveal mode on. The instructor's own
`drill program status` reads the run's files and shows everything.
"""

from __future__ import annotations

from typing import Any

# The snapshot keys that name the culprit or a decoy (drill.program.runner.snapshot_of).
SECRET_KEYS = ("drawn", "live", "flags", "decoys")
HIDDEN = "hidden until reveal mode"


def revealed(snapshot: dict[str, Any]) -> bool:
    return bool(snapshot.get("reveal"))


def room_view(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The snapshot without the culprit, triggers and decoys unless reveal mode is on.

    Released hints keep their text (they are for the room) but not the scenario they belong to.
    """
    if revealed(snapshot):
        return snapshot
    shown = {key: value for key, value in snapshot.items() if key not in SECRET_KEYS}
    shown["hidden"] = {key: HIDDEN for key in SECRET_KEYS if key in snapshot}
    if "hints" in snapshot:
        shown["hints"] = [
            {key: value for key, value in hint.items() if key != "scenario"}
            for hint in snapshot["hints"]
        ]
    return shown
