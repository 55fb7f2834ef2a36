"""scenarios.yaml: the workshop program, validated into typed models.

Each scenario follows a chaos experiment's order: steady state (the lab answers), method
(triggers plus load), and rollback (flags restored), which always runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from drill.agenda import (
    ENTRY_TAG_POSITION,
    ClockTime,
    Entry,
    Location,
    Phase,
    Problem,
    Rotation,
    agenda_problems,
)
from drill.program.rotation import draw
from faults import Catalog, load_catalog

# Figures drill verify can check; collectors for a service add their own names.
REQUEST_FIGURES = frozenset(
    {
        "requests",
        "success_ratio",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "throughput_rps",
        "stuck_windows",
        "hung_requests",
    }
)
# Figures that say how fast the machine is; every other figure is an invariant.
LATENCY_FIGURES = frozenset({"p50_ms", "p95_ms", "p99_ms", "max_ms", "throughput_rps"})
SERVICE_FIGURES = frozenset(
    {
        "ledger.balance_drift",
        "ledger.duplicate_postings",
        "ledger.unconfirmed_payments",
        "ledger.payments",
        "ledger.misbooked_postings",
        "ledger.retried_payments",
        "chain.orders_after_load",
        "chain.unanswered_orders",
        "chain.orders_succeeded",
        "chain.total_mismatches",
        "chain.held_orders_confirmed",
        "chain.orders_not_held_once",
        "chain.confirmed_orders",
        "feed.timeline_requests",
        "feed.db_queries_per_request_max",
        "feed.db_queries_per_request_mean",
        "feed.external_calls_per_request_mean",
        "feed.external_calls_per_request_max",
        "feed.reads_checked",
        "feed.authors_missing",
        "feed.authors_wrong",
        "feed.authors_stale",
        "feed.posts_wrong",
        "feed.event_loop_lag_mean_ms",
        "feed.event_loop_lag_max_ms",
    }
)

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# "ms" before "m": 250ms is a quarter second, not 250 minutes and an s.
_SPAN = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds from 90, "90s", "1.5m", "250ms" or "1h30m": scenarios.yaml's and the CLI's."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 60s or 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip().replace(" ", "")
        spans = _SPAN.findall(text)
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        elif text and "".join(number + unit for number, unit in spans) == text:
            seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in spans)
        else:
            raise ValueError(f"expected a duration such as 60s or 2m, got {value!r}")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Seconds = Annotated[float, BeforeValidator(parse_duration)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Trigger(Strict):
    flag: str
    variant: str
    percent: float | None = Field(None, gt=0, le=100)
    min_acted: int = Field(
        1,
        ge=1,
        description="Evaluations that must take the trigger's path in a run (faults counts "
        "them); fewer means the condition was switched off rather than survived",
    )


class Load(Strict):
    locustfile: str
    user: str
    users: int = Field(ge=1, le=1000)
    spawn_rate: float = Field(gt=0)
    duration: Seconds
    host: str = Field(description="The service Locust targets")
    warmup: Seconds | None = Field(
        None, description="Requests started in the first seconds of the load are not judged"
    )
    client_timeout: Seconds | None = Field(
        None,
        description="How long a client waits for an answer (passed to Locust); a request that "
        "takes this long hung",
    )
    window: Seconds = Field(
        2.0, description="Length of the windows in which stuck_windows looks for a completion"
    )

    @model_validator(mode="after")
    def _warmup_within_duration(self) -> Load:
        if self.warmup is not None and self.warmup >= self.duration:
            raise ValueError("warmup must be shorter than duration")
        return self


class SlaCheck(Strict):
    name: str
    kind: Literal["invariant", "latency"] = Field(
        description="invariant: holds on any machine and carries the verdict on the defect; "
        "latency: a bound that depends on the machine, with its basis written down"
    )
    figure: str
    request: str | None = Field(None, description='e.g. "POST /transactions"; default all')
    max: float | None = None
    min: float | None = None
    baseline: bool = Field(
        True,
        description="false for a check of the fix rather than of health (e.g. queries per "
        "request); `drill verify --baseline` skips it",
    )
    basis: str | None = Field(
        None,
        description="For a latency bound: where the number comes from (the injected latency "
        "plus stated headroom, or a calibration) and why it holds on the slowest machine",
    )

    @model_validator(mode="after")
    def _known_bound(self) -> SlaCheck:
        if self.figure not in REQUEST_FIGURES | SERVICE_FIGURES:
            known = ", ".join(sorted(REQUEST_FIGURES | SERVICE_FIGURES))
            raise ValueError(f"unknown figure {self.figure!r}; known: {known}")
        if self.request is not None and self.figure not in REQUEST_FIGURES:
            raise ValueError(f"request filters apply to request figures, not {self.figure!r}")
        if self.max is None and self.min is None:
            raise ValueError("give max, min or both")
        if self.kind == "latency" and self.figure not in LATENCY_FIGURES:
            raise ValueError(f"{self.figure!r} does not depend on the machine: kind: invariant")
        if self.kind == "invariant" and self.figure in LATENCY_FIGURES:
            raise ValueError(f"{self.figure!r} depends on the machine's speed: kind: latency")
        if self.kind == "latency" and not (self.basis or "").strip():
            raise ValueError("a latency bound needs its basis: where the number comes from")
        return self


class Scenario(Strict):
    title: str
    services: list[str] = Field(min_length=1)
    summary: str
    triggers: list[Trigger] = Field(min_length=1)
    load: Load
    sla: list[SlaCheck] = Field(min_length=1)
    hints: list[str] = []


def _retired_version(value: Any) -> Any:
    if value == 1:
        raise ValueError(
            "version 1 is retired: its phases: became agenda: (phases and breaks) with length: "
            "and rotation:; see the lab's scenarios.yaml"
        )
    return value


class Scoring(Strict):
    """The teams' points (drill.program.teams): what a root cause, a fix and a hint are worth."""

    root_cause: int = Field(100, ge=0, description="An accepted root-cause claim")
    dark_room_bonus: int = Field(
        50, ge=0, description="On top, when the claim came within dark_room_minutes of going live"
    )
    dark_room_minutes: int = Field(40, ge=1, description="The seed's human-only investigation")
    fix_verified: int = Field(100, ge=0, description="A passing `drill verify --submit`")
    hint_costs: list[int] = Field(
        [10, 20, 40], min_length=1, description="Hint N costs hint_costs[N-1] (the last repeats)"
    )

    @field_validator("hint_costs")
    @classmethod
    def _costs_not_negative(cls, costs: list[int]) -> list[int]:
        if any(cost < 0 for cost in costs):
            raise ValueError("a hint's cost is 0 or more points")
        return costs

    def hint_cost(self, number: int) -> int:
        return self.hint_costs[min(number, len(self.hint_costs)) - 1]


class Program(Strict):
    version: Annotated[Literal[2], BeforeValidator(_retired_version)]
    scenarios: dict[str, Scenario] = Field(min_length=1)
    length: ClockTime = Field(description="The workshop's length, H:MM; the agenda fills it")
    agenda: list[Entry] = Field(min_length=1)
    rotation: Rotation | None = Field(None, description="Default: every scenario live, no decoys")
    scoring: Scoring = Field(default_factory=Scoring)

    def scenario(self, name: str) -> Scenario:
        try:
            return self.scenarios[name]
        except KeyError:
            known = ", ".join(sorted(self.scenarios))
            raise ScenarioFileError(f"no scenario {name!r}; known: {known}") from None

    def agenda_scenarios(self) -> tuple[str, ...]:
        """The known scenarios the agenda's phases name, in order of first appearance."""
        named = (s for e in self.agenda if isinstance(e, Phase) for s in e.scenarios)
        return tuple(dict.fromkeys(s for s in named if s in self.scenarios))

    def services(self) -> frozenset[str]:
        """Every service a scenario involves: the lab's services a decoy may hit."""
        return frozenset(service for s in self.scenarios.values() for service in s.services)


class ScenarioFileError(ValueError):
    """scenarios.yaml cannot be used; the message names the place in the file."""


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML node at a pydantic error location, as deep as it exists."""
    node, line = root, None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top)"


def _trigger_problems(program: Program, catalog: Catalog) -> Iterator[Problem]:
    for name, scenario in program.scenarios.items():
        for index, trigger in enumerate(scenario.triggers):
            here: Location = ("scenarios", name, "triggers", index)
            if trigger.flag not in catalog:
                yield (*here, "flag"), f"unknown flag {trigger.flag!r}"
            elif trigger.variant not in catalog[trigger.flag].variants:
                choices = ", ".join(catalog[trigger.flag].variants)
                message = f"{trigger.flag} has no variant {trigger.variant!r}"
                yield (*here, "variant"), f"{message}; choose one of: {choices}"


def _problems(program: Program, catalog: Catalog) -> Iterator[Problem]:
    """What the models cannot see alone: the catalog, the agenda as a whole, the rotation."""
    yield from _trigger_problems(program, catalog)
    yield from agenda_problems(program, catalog)
    if program.rotation is not None:
        # Under the file's own seed; the runner checks a seed given on its command line.
        yield from draw(program, program.rotation.seed).problems


def load_program(path: Path, catalog: Catalog | None = None) -> Program:
    """Parse and validate scenarios.yaml, naming file, line and field on any error."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ScenarioFileError(f"{path}: not found; run drill from the lab's directory") from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f"{mark.line + 1}:{mark.column + 1}" if mark else "?"
        raise ScenarioFileError(f"{path}:{line}: not valid YAML: {exc.problem}") from None
    if root is None or not isinstance(data, dict):
        raise ScenarioFileError(f"{path}: expected a mapping with version and scenarios")
    try:
        program = Program.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        if loc[:1] == ("agenda",) and len(loc) > ENTRY_TAG_POSITION:
            loc = loc[:ENTRY_TAG_POSITION] + loc[ENTRY_TAG_POSITION + 1 :]
        message = error["msg"].removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ScenarioFileError(
            f"{path}:{_line_of(root, loc)}: {_dotted(loc)}: {message}{more}"
        ) from None
    problem = next(_problems(program, catalog or load_catalog()), None)
    if problem is not None:
        loc, message = problem
        raise ScenarioFileError(f"{path}:{_line_of(root, loc)}: {_dotted(loc)}: {message}")
    return program
