"""Rotation: a run's seed picks which scenarios are live and where the decoys land.

Rotating the culprit between runs keeps teams honest ("rotate scenarios for adversarial
thinking"); decoys are generic faults on services that are not the culprit. The draw uses only
`random.Random(seed).random()`, whose sequence Python promises to keep across versions (unlike
`sample` or `choice`), so a seed names the same run on every machine and release.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drill.agenda import Decoy, Location, Problem

if TYPE_CHECKING:
    from drill.scenarios import Program


@dataclass(frozen=True)
class Draw:
    """One run's rotation: its live scenarios, its decoys on their services, and any decoy the
    seed leaves nowhere to go (such a decoy is left out of `decoys`, never put on a culprit)."""

    seed: int
    live: tuple[str, ...]
    decoys: tuple[Decoy, ...]
    problems: tuple[Problem, ...]


def draw(program: Program, seed: int) -> Draw:
    """The live scenarios (in agenda order) and decoy targets for a run with this seed."""
    rng = random.Random(seed)
    pool = program.agenda_scenarios()
    if program.rotation is None:
        return Draw(seed, pool, (), ())
    # Shuffle by one random key per scenario, then keep the first `live` of them.
    keys = {name: rng.random() for name in pool}
    picked = set(sorted(pool, key=keys.__getitem__)[: program.rotation.live])
    live = tuple(name for name in pool if name in picked)
    culprits = {service: name for name in live for service in program.scenarios[name].services}
    bystanders = sorted(program.services() - culprits.keys())
    decoys: list[Decoy] = []
    problems: list[Problem] = []
    for index, decoy in enumerate(program.rotation.decoys):
        here: Location = ("rotation", "decoys", index)
        if decoy.service is None:
            if not bystanders:
                problems.append((here, f"seed {seed}: every service belongs to a live scenario"))
                continue
            service = bystanders[int(rng.random() * len(bystanders))]
            decoys.append(decoy.model_copy(update={"service": service}))
        elif decoy.service in culprits:
            problems.append(
                (
                    (*here, "service"),
                    f"seed {seed} makes {culprits[decoy.service]} live, and {decoy.service} is "
                    "one of its services: a decoy hits a service that is not the culprit",
                )
            )
        else:
            decoys.append(decoy)
    return Draw(seed, live, tuple(decoys), tuple(problems))
