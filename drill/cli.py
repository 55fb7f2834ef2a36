"""drill: the instructor's and CI's command line for the lab.

Start-up is part of the interface: `drill flags set` acts in front of a room. This module
imports only typer, the lab model and the flag files; a command imports what else it needs
(rich for tables and colour, HTTP, the native and compose labs, scenarios, verify) when it runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from drill.lab.model import HOST, SERVICES, LabConfig, LabError, ServiceStatus, find_root
from faults import (
    DEFAULT,
    INSTRUCTOR,
    LAYERS,
    Catalog,
    CatalogError,
    FlagStateError,
    clear_layer,
    describe,
    live_flags,
    load_catalog,
    set_layer_flags,
    targets,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from drill.verify import VerifyResult

app = typer.Typer(
    help="Run the 3 A.M. Drill lab: start it, flip its flags, verify fixes.", no_args_is_help=True
)
flags_app = typer.Typer(
    help="List and flip the lab's flags (the instructor's switches).", no_args_is_help=True
)
solutions_app = typer.Typer(
    help="Apply or revert a reference fix from solutions/.", no_args_is_help=True
)
app.add_typer(flags_app, name="flags")
app.add_typer(solutions_app, name="solutions")
# The singular was the command's first name: participants' scripts and old notes still use it.
app.add_typer(
    solutions_app,
    name="solution",
    hidden=True,
    deprecated=True,
    help="Deprecated: `drill solutions`.",
)
program_app = typer.Typer(
    help="Run the workshop's program: its clock, phases, flags and background traffic.",
    no_args_is_help=True,
)
app.add_typer(program_app, name="program")


class LazyConsole:
    """rich's Console, made when a command first prints through it: importing rich is a third
    of the start-up of `drill flags set`, which prints plain lines (typer.echo)."""

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def rich(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return self._console

    def print(self, *objects: Any, **options: Any) -> None:
        self.rich.print(*objects, **options)


console = LazyConsole()
errors = LazyConsole(stderr=True)


def escape(text: str) -> str:
    """text with rich's markup escaped, to print through console as it is."""
    from rich.markup import escape as escape_markup

    return escape_markup(text)


def _table(*columns: str, **options: Any) -> Table:
    from rich.table import Table

    return Table(*columns, **options)


RootOption = Annotated[
    Path | None,
    typer.Option("--root", help="The lab's source tree (default: found from the current dir)."),
]


def _switch(flag: str, text: str) -> Any:
    """A bool option that only turns on: FLAG alone, without the --no-... twin typer gives every
    bool option by default."""
    return typer.Option(flag, help=text)


def _fail(message: str, code: int = 2) -> typer.Exit:
    # One line however narrow the terminal: a file:line or a path stays whole to copy.
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def _failing_on(*kinds: type[Exception]) -> Iterator[None]:
    """Any of these errors raised inside ends the command with its message, not a traceback."""
    try:
        yield
    except kinds as exc:
        raise _fail(str(exc)) from None


def _instructors_module(name: str, what_to_do: str) -> Any:
    """A module the participant kit leaves out, imported by name, or a clear error in a kit."""
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise _fail(f"this tree is a participant kit: {what_to_do}") from None


def _out_option(default: str) -> Any:
    """The `--out` option of a command that writes a file, saying what it writes without one."""
    return typer.Option(help=f"Write here (default: {default}).")


def _config(root: Path | None) -> LabConfig:
    with _failing_on(LabError):
        return LabConfig.from_env(root)


def _lab_flags(root: Path | None) -> tuple[LabConfig, Catalog]:
    """The lab and its flag catalog (its faults/flags.json), for the flags commands; or a clear
    error naming the bad place."""
    config = _config(root)
    path = config.root / "faults" / "flags.json"
    try:
        return config, load_catalog(path) if path.is_file() else load_catalog()
    except CatalogError as exc:
        raise _fail(f"bad flag catalog: {exc}") from None


def _seconds(value: str) -> float:
    """A duration option: 60s, 2m, 1.5m or 90 (seconds), as scenarios.yaml writes them."""
    from drill.scenarios import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        message = str(exc)
        raise typer.BadParameter(
            message if repr(value) in message else f"{value!r}: {message}"
        ) from None
    if seconds < 1:
        raise typer.BadParameter(f"{value!r}: at least 1s")
    return seconds


def _print_status(rows: list[ServiceStatus]) -> None:
    table = _table("service", "url", "pid", "state")
    for row in rows:
        state = (
            "[green]ready[/green]" if row.ready else f"[red]{escape(row.detail or 'down')}[/red]"
        )
        table.add_row(escape(row.name), escape(row.url), str(row.pid or "-"), state)
    console.print(table)


@app.command()
def up(
    native_lab: Annotated[
        bool, _switch("--native", "Run services as local processes (no Docker).")
    ] = False,
    only: Annotated[list[str] | None, typer.Option("--only", help="Start just these.")] = None,
    root: RootOption = None,
) -> None:
    """Start the lab: compose when a Docker engine answers; --native: local processes."""
    config = _config(root)
    if native_lab:
        from drill import native

        with _failing_on(LabError):
            _print_status(native.up(config, only=only))
        return
    from drill import compose

    if not compose.engine_available():
        raise _fail(
            "no Docker engine answers here (`docker info`), so the compose lab cannot start; "
            "start the native lab instead, which needs no Docker: drill up --native"
        )
    with _failing_on(compose.ComposeError):
        started = compose.up(config, only or [])
    console.print(f"compose lab up: {', '.join(started)}", highlight=False)


@app.command()
def down(root: RootOption = None) -> None:
    """Stop exactly what `drill up --native` started."""
    from drill import native

    with _failing_on(LabError):
        stopped = native.down(_config(root))
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command()
def status(root: RootOption = None) -> None:
    """Show each service's process and readiness."""
    from drill import native

    with _failing_on(LabError):
        rows = native.status(_config(root))
    _print_status(rows)
    if not all(row.ready for row in rows):
        raise typer.Exit(1)


@app.command()
def restart(
    services: Annotated[list[str] | None, typer.Argument(help="Default: every service.")] = None,
    root: RootOption = None,
) -> None:
    """Restart services, e.g. after changing their code (the compose lab's containers too)."""
    from drill import compose, native

    config = _config(root)
    with _failing_on(LabError, compose.ComposeError):
        if compose.use_compose(config):
            _print_status(compose.restart(config, services or []))
        else:
            _print_status(native.restart(config, services or list(SERVICES)))


@app.command()
def serve(
    services: Annotated[list[str], typer.Argument(help="Services or groups, e.g. chain.")],
    host: Annotated[
        str, typer.Option(help="Interface to listen on; 0.0.0.0 inside a container.")
    ] = HOST,
    root: RootOption = None,
) -> None:
    """Run services in the foreground (a compose container's command); exit when one exits."""
    from drill import compose

    with _failing_on(compose.ComposeError):
        code = compose.serve(_config(root), services, host=host)
    raise typer.Exit(code)


@flags_app.command("list")
def flags_list(root: RootOption = None) -> None:
    """Every flag, its live variant, the layer it comes from and what it does."""
    config, catalog = _lab_flags(root)
    with _failing_on(FlagStateError):
        live = live_flags(config.state_dir, catalog)
    table = _table("flag", "live", "from", "variants", "description")
    for key, spec in catalog.flags.items():
        variant, value, share = describe(live[key].definition)
        shown = f"{variant} ({value!r})" + (f" for {share:g}%" if share is not None else "")
        # A decoy's flag is limited to a service (and route).
        shown += "".join(f" {k}={v}" for k, v in targets(live[key].definition).items())
        shown = escape(shown)
        if variant != spec.default_variant:
            shown = f"[yellow]{shown}[/yellow]"
        source = live[key].layer
        if live[key].by not in (None, "", source):
            source += f" ({live[key].by})"
        table.add_row(
            key, shown, escape(source), escape(", ".join(spec.variants)), escape(spec.description)
        )
    console.print(table)
    console.print(
        f"layers, later wins: {' < '.join(LAYERS)}; `drill flags set` and `reset` change only "
        f"the {INSTRUCTOR}'s",
        highlight=False,
    )


@flags_app.command("set")
def flags_set(
    flag: str,
    variant: str,
    percent: Annotated[
        float | None, typer.Option(help="Serve the variant to this share of requests or users.")
    ] = None,
    root: RootOption = None,
) -> None:
    """Set FLAG to VARIANT in the instructor's layer (services pick it up within a second)."""
    config, catalog = _lab_flags(root)
    try:
        set_layer_flags(
            config.state_dir, catalog, INSTRUCTOR, {flag: (variant, percent)}, by=INSTRUCTOR
        )
    except (FlagStateError, KeyError) as exc:
        raise _fail(str(exc).strip('"')) from None
    _journal_flags(config, {flag: (variant, percent)})
    share = f" for {percent:g}%" if percent is not None else ""
    typer.echo(f"{flag} = {variant}{share}")
    _note_held(config, catalog, [flag])


@flags_app.command("reset")
def flags_reset(
    flags: Annotated[
        list[str] | None, typer.Argument(help="Only these flags (default: all of yours).")
    ] = None,
    every_layer: Annotated[
        bool, _switch("--all", "Clear every layer (program, verify too): after a crash.")
    ] = False,
    root: RootOption = None,
) -> None:
    """Take back the instructor's flags; the program's and a verify run's stand."""
    config, catalog = _lab_flags(root)
    layers = LAYERS if every_layer else (INSTRUCTOR,)
    with _failing_on(FlagStateError):
        for layer in layers:
            cleared = clear_layer(config.state_dir, catalog, layer, flags)
            typer.echo(f"{layer} layer: cleared {', '.join(cleared) or 'nothing'}")
            off = {key: (catalog[key].default_variant, None) for key in cleared}
            _journal_flags(config, off, layer)
    _note_held(config, catalog, flags or list(catalog.flags), only_on=True)


def _journal_flags(
    config: LabConfig,
    changes: Mapping[str, tuple[str, float | None]],
    layer: str = INSTRUCTOR,
) -> None:
    """The program's journal records the instructor's flips too (the post-mortem timeline)."""
    from drill.program.journal import Journal, journal_path

    journal = Journal(journal_path(config.state_dir))
    for flag, (variant, percent) in changes.items():
        journal.append(
            "flag_changed", INSTRUCTOR, flag=flag, variant=variant, percent=percent, layer=layer
        )


def _note_held(
    config: LabConfig, catalog: Catalog, keys: list[str], *, only_on: bool = False
) -> None:
    """Say which of these flags another layer decides, so the instructor is not surprised."""
    live = live_flags(config.state_dir, catalog)
    for key in keys:
        layer = live[key].layer
        variant, _, _ = describe(live[key].definition)
        if only_on and variant == catalog[key].default_variant:
            continue
        if layer not in (INSTRUCTOR, DEFAULT):
            typer.echo(f"{key} is {variant}: the {layer} layer decides it")


@app.command()
def scenarios(root: RootOption = None) -> None:
    """Check scenarios.yaml and list its scenarios."""
    from drill.scenarios import ScenarioFileError, load_program

    config = _config(root)
    with _failing_on(ScenarioFileError):
        program = load_program(config.root / "scenarios.yaml")
    table = _table("scenario", "title", "triggers", "load")
    for name, scenario in program.scenarios.items():
        triggers = ", ".join(
            f"{t.flag}={t.variant}" + (f"@{t.percent:g}%" if t.percent else "")
            for t in scenario.triggers
        )
        load = f"{scenario.load.users} users, {scenario.load.duration:g}s"
        table.add_row(name, scenario.title, triggers, load)
    console.print(table)


@app.command()
def guardrails(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Files or directories to scan (default: services drill faults)."),
    ] = None,
    root: RootOption = None,
) -> None:
    """Review checks for the lab's defect classes: semgrep rules, ruff ASYNC/S113, call graph."""
    checks = _instructors_module(
        "drill.guardrails",
        "the guardrails arrive in phase 4 (the instructor's `drill pack phase4`)",
    )
    with _failing_on(checks.GuardrailsError):
        report = checks.run(root or find_root(Path.cwd()), paths or [])
    for finding in report.findings:
        console.print(finding.render(), markup=False, highlight=False, soft_wrap=True)
    for note in report.notes:
        errors.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    took = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.seconds.items())
    errors.print(f"{len(report.findings) or 'no'} findings ({took})", highlight=False)
    raise typer.Exit(1 if report.findings else 0)


def _print_result(result: VerifyResult) -> None:
    mode = "baseline (every trigger off)" if result.baseline else "triggers on"
    table = _table(
        "kind", "check", "figure", "value", "bound", "result",
        title=f"drill verify {result.scenario}: {mode}, {result.users} users, "
        f"{result.load_seconds:g}s"
        + (f" (first {result.warmup_seconds:g}s not judged)" if result.warmup_seconds else ""),
    )  # fmt: skip
    for check in result.checks:
        figure = check.figure + (f" [{check.request}]" if check.request else "")
        bound = " ".join(
            part
            for part in (
                f"<= {check.max:g}" if check.max is not None else "",
                f">= {check.min:g}" if check.min is not None else "",
            )
            if part
        )
        verdict = "[green]pass[/green]" if check.passed else "[red]FAIL[/red]"
        table.add_row(check.kind, check.name, figure, f"{check.value:.6g}", bound, verdict)
    console.print(table)
    console.print(
        "invariants carry the verdict on the defect on any machine; latency bounds hold on "
        "the slowest supported one (2 vCPUs at half a laptop core's speed):",
        highlight=False,
    )
    for check in result.checks:
        if check.kind == "latency" and check.basis:
            console.print(
                f"  {check.name}: {' '.join(check.basis.split())}", markup=False, highlight=False
            )
    console.print(f"run artifacts: {result.run_dir}", markup=False)


@app.command()
def verify(
    scenario: str,
    baseline: Annotated[
        bool, _switch("--baseline", "Every trigger off: the clean baseline.")
    ] = False,
    duration: Annotated[
        float | None,
        typer.Option(
            help="How long to load: 60s, 2m or 90 (seconds); default: the scenario's.",
            parser=_seconds,
            metavar="DURATION",
        ),
    ] = None,
    users: Annotated[int | None, typer.Option(help="Locust users.", min=1)] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result here.")] = None,
    submit: Annotated[
        bool,
        _switch("--submit", "Send the result to the workshop's scoreboard (DRILL_TEAM_TOKEN)."),
    ] = False,
    markdown: Annotated[
        Path | None,
        typer.Option(help="Append a Markdown verdict table here (a CI job's summary)."),
    ] = None,
    root: RootOption = None,
) -> None:
    """Prove a fix: load with the triggers on, check the SLAs. Exit 0 pass, 1 missed, 2 no run."""
    from drill.scenarios import ScenarioFileError
    from drill.verify import VerifyError, run_verify

    config = _config(root)
    with _failing_on(VerifyError, ScenarioFileError):
        result = run_verify(
            config,
            scenario,
            baseline=baseline,
            seconds=duration,
            users=users,
        )
    _print_result(result)
    if json_path is not None:
        json_path.write_text(result.to_json())
    if markdown is not None:
        from drill.summary import markdown as verdict_table

        with open(markdown, "a") as summary:
            summary.write(verdict_table(result))
    if submit:
        _submit(config, result)
    if not result.passed:
        errors.print("[red]SLA missed[/red]")
        raise typer.Exit(1)
    console.print("[green]all SLAs met[/green]")


def _submit(config: LabConfig, result: VerifyResult) -> None:
    import json

    from drill.program.team_client import Scoreboard, TeamClientError

    board = Scoreboard.from_env(config.port_offset)
    try:
        sent = board.call("POST", "/verify-runs", json.loads(result.to_json()))
    except TeamClientError as exc:
        errors.print(f"[red]not submitted:[/red] {escape(str(exc))}", highlight=False)
        return
    console.print(f"submitted to {board.url} as run {sent['id']}", highlight=False)


@app.command()
def seed(
    number: Annotated[
        int, typer.Option("--seed", min=0, help="Seed number: the same number, the same data.")
    ] = 7,
    users: Annotated[int, typer.Option(min=1100, max=50_000, help="Users to create.")] = 2000,
    root: RootOption = None,
) -> None:
    """Reseed the feed's users, follows and posts (the running feed service does it, as the
    instructor: the admin route needs the instructor's token)."""
    from drill import admin
    from drill.lab.model import endpoints

    config = _config(root)
    url = endpoints(config).get("feed")
    if url is None:
        raise _fail("this lab has no feed service")
    try:
        body = admin.reseed_feed(url, admin.instructor_token(config), number, users)
    except admin.Unreachable as exc:
        raise _fail(
            f"{exc}; start the lab with `drill up --native` "
            "(or `drill up --native --only feed --only profiles`)"
        ) from None
    except admin.AdminError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"feed reseeded from seed {body['seed']}: {body['users']:,} users, "
        f"{body['follows']:,} follows, {body['posts']:,} posts"
    )


@app.command()
def evidence(
    scenario: str,
    trace_ids: Annotated[
        list[str], typer.Option("--trace-id", help="A trace id (32 hex digits); repeat for more.")
    ],
    since: Annotated[str, typer.Option(help="Metrics window, e.g. 15m or 1h.")] = "15m",
    out: Annotated[Path | None, _out_option("stdout")] = None,
    log_lines: Annotated[int, typer.Option(help="Log lines per trace at most.", min=1)] = 40,
    root: RootOption = None,
) -> None:
    """Write the phase 3 evidence bundle (Markdown): symptom, claim, spans, metrics, logs, code."""
    from drill import evidence as bundle_sources
    from drill.scenarios import ScenarioFileError

    config = _config(root)
    with _failing_on(bundle_sources.EvidenceError, ScenarioFileError):
        bundle = bundle_sources.collect(
            config, scenario, trace_ids, since=since, log_lines=log_lines
        )
    if out is None:
        typer.echo(bundle.markdown(), nl=False)
        return
    try:
        bundle_sources.write_bundle(out, bundle.markdown())
    except OSError as exc:
        raise _fail(f"could not write {out}: {exc}") from None
    console.print(f"evidence bundle written to {out}", markup=False, highlight=False)
    for line in bundle.summary():
        console.print(f"  {line}", highlight=False, markup=False)


@solutions_app.command("apply")
def solution_apply(name: str, root: RootOption = None) -> None:
    """Apply solutions/NAME.patch to the service code (then `drill restart`)."""
    from drill import solutions

    with _failing_on(solutions.SolutionError):
        solutions.apply(_config(root).root, name)
    console.print(f"applied {name}; restart the services to run it: drill restart")


@solutions_app.command("revert")
def solution_revert(name: str, root: RootOption = None) -> None:
    """Take solutions/NAME.patch back out."""
    from drill import solutions

    with _failing_on(solutions.SolutionError):
        solutions.apply(_config(root).root, name, reverse=True)
    console.print(f"reverted {name}; restart the services: drill restart")


def _wall_clock(value: str) -> datetime:
    """`--started-at`: HH:MM[:SS] today in local time, or an ISO date-time (with its offset)."""
    try:
        if "T" in value or "-" in value:
            when = datetime.fromisoformat(value)
            return when if when.tzinfo else when.astimezone()
        parts = [int(part) for part in value.split(":")]
        if len(parts) not in (2, 3) or not (0 <= parts[0] < 24 and 0 <= parts[1] < 60):
            raise ValueError
        second = parts[2] if len(parts) == 3 else 0
        if not 0 <= second < 60:
            raise ValueError
        return (
            datetime.now()
            .astimezone()
            .replace(hour=parts[0], minute=parts[1], second=second, microsecond=0)
        )
    except ValueError:
        raise _fail(
            f"--started-at {value!r}: give a wall-clock time today, HH:MM or HH:MM:SS (local "
            "time), or an ISO date-time such as 2026-12-01T09:15:00+01:00"
        ) from None


@program_app.command("start")
def program_start(
    at: Annotated[str | None, typer.Option(help="Start at this program time, H:MM.")] = None,
    started_at: Annotated[
        str | None,
        typer.Option(
            help="The program began at this wall-clock time (HH:MM today): a team's runner "
            "joins the instructor's, e.g. --started-at 09:15."
        ),
    ] = None,
    speed: Annotated[
        float | None, typer.Option(help="Run N times faster (180: the agenda in a minute).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Rotation seed (default: the file's).")] = None,
    fresh: Annotated[
        bool, _switch("--fresh", "Start over instead of resuming a crashed run.")
    ] = False,
    foreground: Annotated[
        bool, _switch("--foreground", "Run here until stopped (Ctrl-C rolls back).")
    ] = False,
    traffic: Annotated[bool, typer.Option(help="Background Locust per scenario.")] = True,
    annotations: Annotated[bool, typer.Option(help="Grafana annotations.")] = True,
    listen: Annotated[
        str | None,
        typer.Option(
            help="Serve /metrics and /program on this address too; `docker` is the Docker "
            "bridge, where the compose lab's Prometheus scrapes the runner."
        ),
    ] = None,
    root: RootOption = None,
) -> None:
    """Start the program's runner (in the background unless --foreground); resumes a crashed run."""
    from drill.agenda import format_clock
    from drill.program import control, runner
    from drill.scenarios import ScenarioFileError

    config = _config(root)
    with _failing_on(runner.ProgramError, ScenarioFileError, ValueError):
        started = control.start(
            config, foreground=foreground, at=at, speed=speed, seed=seed, fresh=fresh,
            traffic=traffic, annotations=annotations, listen=listen,
            started_at=None if started_at is None else _wall_clock(started_at),
        )  # fmt: skip
    how = "resumed" if started.resumed else "started"
    console.print(
        f"program {how} at {format_clock(started.at)} (seed {started.seed}), runner pid "
        f"{started.pid}; journal: {runner.ProgramFiles.of(config.state_dir).journal}",
        highlight=False,
    )
    if foreground:
        raise typer.Exit(runner.serve(config))


@program_app.command("status")
def program_status(
    watch: Annotated[bool, _switch("--watch", "A live panel until Ctrl-C.")] = False,
    room: Annotated[
        bool,
        _switch("--room", "For the projector: no culprit, trigger or decoy until reveal mode."),
    ] = False,
    root: RootOption = None,
) -> None:
    """The phase, time left and what comes next; live triggers and decoys; the break's questions."""
    import time

    from rich.live import Live

    from drill.program import control, view

    config = _config(root)
    if not watch:
        console.print(view.render(control.read_status(config), room))
        return
    with Live(view.render(control.read_status(config), room), console=console.rich) as live:
        try:
            while True:
                time.sleep(0.5)
                live.update(view.render(control.read_status(config), room))
        except KeyboardInterrupt:
            pass


def _clock_command(action: str, target: str | None, root: Path | None) -> None:
    from drill.agenda import format_clock
    from drill.program import control, runner
    from drill.scenarios import ScenarioFileError

    config = _config(root)
    with _failing_on(runner.ProgramError, ScenarioFileError):
        clock = control.change_clock(config, action, target)
        alive = runner.runner_alive(runner.ProgramFiles.of(config.state_dir))
    console.print(f"{action}: program clock at {format_clock(clock.at)}"
                  + (" (paused)" if clock.paused else ""), highlight=False)  # fmt: skip
    if alive is None:
        console.print("no runner is running: `drill program start` resumes from here")


@program_app.command("pause")
def program_pause(root: RootOption = None) -> None:
    """Stop the program clock; flags and traffic stay as they are."""
    _clock_command("pause", None, root)


@program_app.command("resume")
def program_resume(root: RootOption = None) -> None:
    """Let the program clock run again from where it was paused."""
    _clock_command("resume", None, root)


@program_app.command("next")
def program_next(root: RootOption = None) -> None:
    """Jump to the start of the next agenda entry."""
    _clock_command("next", None, root)


@program_app.command("goto")
def program_goto(
    target: Annotated[str, typer.Argument(help="An entry's name (or part of it), or H:MM.")],
    root: RootOption = None,
) -> None:
    """Jump to an agenda entry (or a program time); hints before it are released once."""
    _clock_command("goto", target, root)


@program_app.command("stop")
def program_stop(root: RootOption = None) -> None:
    """Stop the runner; every program flag off, traffic stopped (without a runner: done here)."""
    from drill.program import control, runner
    from drill.scenarios import ScenarioFileError

    config = _config(root)
    with _failing_on(runner.ProgramError, ScenarioFileError):
        console.print(control.stop(config))


# -- teams: the instructor's side (on the runner's machine) and each team's ------------------

teams_app = typer.Typer(help="The workshop's teams and their tokens.", no_args_is_help=True)
program_app.add_typer(teams_app, name="teams")


def _workshop(config: LabConfig) -> Any:
    from drill.program.journal import Journal
    from drill.program.runner import ProgramFiles, load
    from drill.program.teams import Workshop
    from drill.scenarios import ScenarioFileError

    files = ProgramFiles.of(config.state_dir)
    with _failing_on(ScenarioFileError):
        program, _ = load(config)
    return Workshop(files.directory, program, Journal(files.journal))


@teams_app.command("add")
def teams_add(
    names: Annotated[list[str], typer.Argument(help="Team names: letters, digits, - and _.")],
    root: RootOption = None,
) -> None:
    """Create teams; prints each team's token (shown this once: hand it to the team)."""
    from drill.program.teams import Refused

    workshop = _workshop(_config(root))
    try:
        tokens = workshop.add_teams(names)
    except Refused as exc:
        raise _fail(exc.detail) from None
    workshop.instructor_token()  # the instructor's exists from the first team on
    table = _table("team", "token (DRILL_TEAM_TOKEN)")
    for name, token in tokens.items():
        table.add_row(name, token)
    console.print(table)
    console.print("Each team sets DRILL_TEAM_TOKEN, and DRILL_SCOREBOARD_URL to this runner.")


@teams_app.command("list")
def teams_list(root: RootOption = None) -> None:
    """The teams (tokens are not kept in the clear: `rotate` gives a team a new one)."""
    for name in _workshop(_config(root)).teams():
        console.print(name, highlight=False)


@teams_app.command("rotate")
def teams_rotate(team: str, root: RootOption = None) -> None:
    """A new token for a team that lost theirs; the old one stops working."""
    from drill.program.teams import Refused

    try:
        token = _workshop(_config(root)).rotate(team)
    except Refused as exc:
        raise _fail(exc.detail) from None
    console.print(f"{team}: {token}", highlight=False)


@program_app.command("token")
def program_token(root: RootOption = None) -> None:
    """The instructor's token (made on first use), for judging from another machine."""
    console.print(_workshop(_config(root)).instructor_token(), highlight=False)


@program_app.command("claims")
def program_claims(root: RootOption = None) -> None:
    """Every root-cause claim, with its evidence: which trace ids the logs know."""
    table = _table("id", "team", "scenario", "status", "filed (UTC)", "claim", "trace ids")
    for claim in _workshop(_config(root)).claims():
        evidence = ", ".join(
            f"{trace_id[:8]}… {'found' if found.get('found') else 'NOT found'}"
            for trace_id, found in claim.evidence.items()
        )
        table.add_row(
            str(claim.id), claim.team, claim.scenario, claim.status, claim.filed_at[11:19],
            claim.text, evidence or "-",
        )  # fmt: skip
    console.print(table)


@program_app.command("judge")
def program_judge(
    claim: Annotated[int, typer.Argument(help="The claim's id (drill program claims).")],
    verdict: Annotated[str, typer.Argument(help="accept or reject")],
    note: Annotated[str, typer.Argument(help="A word for the team.")] = "",
    root: RootOption = None,
) -> None:
    """Accept or reject a team's root-cause claim (journaled; the scoreboard follows)."""
    from drill.program.teams import Refused

    try:
        judged = _workshop(_config(root)).judge(claim, verdict, note)
    except Refused as exc:
        raise _fail(exc.detail) from None
    console.print(f"claim {judged.id} of {judged.team} on {judged.scenario}: {judged.status}")


@program_app.command("scoreboard")
def program_scoreboard(root: RootOption = None) -> None:
    """The scoreboard, every scenario named (the room's page is /scoreboard.html)."""
    from drill.program.scoreboard import board

    shown = board(_workshop(_config(root)))
    table = _table("team", "points", "scenario", "root cause (min)", "hints", "fix verified")
    for team in shown["teams"]:
        table.add_row(team["team"], str(team["points"]), "", "", "", "")
        for name, result in team["scenarios"].items():
            minutes = result["minutes_to_root_cause"]
            mark = " *" if result["in_dark_room"] else ""
            table.add_row(
                "", "", name, "-" if minutes is None else f"{minutes:g}{mark}",
                str(result["hints_used"]), result["fix_verified_at"] or "-",
            )  # fmt: skip
    console.print(table)
    console.print("* within the dark room's minutes", highlight=False)


def _scoreboard(config: LabConfig) -> Any:
    from drill.program.team_client import Scoreboard

    return Scoreboard.from_env(config.port_offset)


@app.command()
def claim(
    scenario: str,
    text: Annotated[str, typer.Argument(help="The root cause, in a sentence or two.")],
    trace_id: Annotated[
        list[str] | None, typer.Option("--trace-id", help="A trace that shows it (repeatable).")
    ] = None,
    promql: Annotated[str | None, typer.Option(help="A PromQL query that shows it.")] = None,
    root: RootOption = None,
) -> None:
    """File your team's root-cause claim with the instructor's runner (DRILL_TEAM_TOKEN)."""
    from drill.program.team_client import TeamClientError
    from drill.program.teams import TRACE_ID, trace_ids_in_logs

    config = _config(root)
    ids = [t.strip().lower() for t in trace_id or []]
    bad = [t for t in ids if not TRACE_ID.match(t)]
    if bad:
        raise _fail(f"a trace id is 32 hex digits: {', '.join(bad)}")
    found = trace_ids_in_logs(config.log_dir, ids)
    for trace, services in found.items():
        where = ", ".join(services) if services else "NOT found in this lab's logs"
        console.print(f"trace {trace}: {where}", highlight=False)
    body = {"scenario": scenario, "text": text, "trace_ids": ids, "promql": promql,
            "found_locally": {t: s for t, s in found.items() if s}}  # fmt: skip
    with _failing_on(TeamClientError):
        filed = _scoreboard(config).call("POST", "/claims", body)
    console.print(f"claim {filed['id']} filed on {scenario}: the instructor will judge it")


@app.command()
def hint(
    scenario: str,
    show: Annotated[bool, _switch("--show", "List the hints you have; buy none.")] = False,
    root: RootOption = None,
) -> None:
    """Take your team's next hint on a scenario (it costs points), through the runner."""
    from drill.program.team_client import TeamClientError, local_hints
    from drill.scenarios import ScenarioFileError, load_program

    config = _config(root)
    board = _scoreboard(config)
    try:
        if show:
            opened = board.call("GET", f"/hints/{scenario}")
            for item in opened["hints"]:
                console.print(f"hint {item['hint']}: {item['text']}", markup=False, highlight=False)
            following = opened["next"]
            if following:
                console.print(f"next: hint {following['hint']} for {following['cost']} points")
            return
        taken = board.call("POST", f"/hints/{scenario}")
    except TeamClientError as exc:
        if exc.reachable:
            raise _fail(str(exc)) from None
        try:
            program = load_program(config.root / "scenarios.yaml").scenario(scenario)
        except ScenarioFileError as error:
            raise _fail(str(error)) from None
        local = None if show else local_hints(config.state_dir, scenario, program.hints)
        errors.print(f"{exc}; this lab's own hints, not scored:", markup=False, highlight=False)
        if local is None:
            raise _fail(f"no more hints on {scenario}") from None
        console.print(f"hint {local[0]}: {local[1]}", markup=False, highlight=False)
        return
    console.print(
        f"hint {taken['hint']} ({taken['cost']} points): {taken['text']}",
        markup=False,
        highlight=False,
    )


@app.command()
def notes(scenario: str, root: RootOption = None) -> None:
    """The scenario's solution notes, once your team's root-cause claim is accepted."""
    from drill.program.team_client import TeamClientError

    with _failing_on(TeamClientError):
        console.print(_scoreboard(_config(root)).call("GET", f"/notes/{scenario}"), markup=False)


@app.command()
def postmortem(
    scenario: str,
    team: Annotated[str, typer.Option(help="The team whose post-mortem this is.")],
    out: Annotated[Path | None, _out_option("postmortem-TEAM-SCENARIO.md")] = None,
    root: RootOption = None,
) -> None:
    """Draft a blameless post-mortem: timeline and figures from the journal and verify runs."""
    from drill.postmortem import PostmortemError, draft
    from drill.scenarios import ScenarioFileError

    config = _config(root)
    with _failing_on(PostmortemError, ScenarioFileError):
        text = draft(config, team, scenario)
    path = out or Path(f"postmortem-{team}-{scenario}.md")
    path.write_text(text)
    console.print(
        f"wrote {path}: fill in the prompts (> ...) with your team", markup=False, highlight=False
    )


pack_app = typer.Typer(help="Build what participants get (instructors).", no_args_is_help=True)
app.add_typer(pack_app, name="pack")


AllowDirtyOption = Annotated[
    bool, _switch("--allow-dirty", "Pack uncommitted changes to tracked files.")
]


@pack_app.command("phase4")
def pack_phase4(
    out: Annotated[Path, typer.Argument(help="NAME.tar.gz, a new file.")],
    allow_dirty: AllowDirtyOption = False,
    root: RootOption = None,
) -> None:
    """Write phase 4's handout: the guardrails, their pre-commit hook and the spec template."""
    pack = _instructors_module("drill.pack", "pack from the instructors' lab tree")
    with _failing_on(pack.PackError):
        handout = pack.build_phase4(_config(root).root, out, allow_dirty=allow_dirty)
    console.print(
        f"phase 4 handout: {handout.path} ({handout.files} files from {handout.commit[:12]}); "
        f"teams run: tar -xzf {handout.path.name} -C <their repository>",
        highlight=False,
    )


@pack_app.command("participants")
def pack_participants(
    out: Annotated[Path, typer.Argument(help="A new or empty directory, or NAME.tar.gz.")],
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="git: a repository with one commit (default); tar: .tar.gz."),
    ] = None,
    allow_dirty: AllowDirtyOption = False,
    root: RootOption = None,
) -> None:
    """Write the participant kit: the lab without its solutions, instructor notes or spoilers."""
    pack = _instructors_module("drill.pack", "pack from the instructors' lab tree")
    with _failing_on(pack.PackError):
        kit = pack.build(_config(root).root, out, fmt=fmt, allow_dirty=allow_dirty)
    console.print(
        f"participant kit: {kit.path} ({kit.format}, {kit.files} files, one commit "
        f"{kit.commit[:12]})",
        highlight=False,
    )


@app.command()
def report(
    out: Annotated[Path | None, _out_option("debrief-report.html or .md")] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="html: one self-contained file; md: PNGs beside it.")
    ] = "html",
    since: Annotated[str, typer.Option(help="How far back: 3h, 90m, 1h30m.")] = "3h",
    probe: Annotated[bool, typer.Option(help="Read a few timelines from the live feed.")] = True,
    root: RootOption = None,
) -> None:
    """The debrief: timeline, ledger, chain, feed and teams, plotted from the journal, the verify
    runs and Prometheus."""
    from drill.report import FORMATS, ReportError, default_out, parse_since, write_report

    if fmt not in FORMATS:
        raise _fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    try:
        seconds = parse_since(since)
    except ValueError as exc:
        raise _fail(f"--since: {exc}") from None
    config = _config(root)
    with _failing_on(ReportError):
        written = write_report(config, out or default_out(fmt), fmt, seconds, probe=probe)
    console.print(f"wrote {', '.join(map(str, written))}", markup=False, highlight=False)


@app.command()
def preflight(
    native_only: Annotated[
        bool, _switch("--native", "Check for the native lab only (no Docker).")
    ] = False,
    offline: Annotated[
        bool, typer.Option(help="Also check the wheels and images a room without internet needs.")
    ] = False,
    lab: Annotated[bool, typer.Option(help="Bring the native lab up and verify it.")] = True,
    duration: Annotated[
        int, typer.Option(help="Seconds of load for each drill's clean baseline.", min=5)
    ] = 20,
    as_json: Annotated[bool, _switch("--json", "Print the checks as JSON.")] = False,
    root: RootOption = None,
) -> None:
    """The evening before: is this machine ready for the day? Says what to fix, in plain words."""
    import json

    from drill import preflight as checks

    config = _config(root)
    options = checks.Options(
        native_only=native_only, offline=offline, lab=lab, verify_seconds=duration
    )
    done = []
    table = _table("check", "result", "found", "what to do")
    for column in table.columns:
        column.overflow = "fold"  # a URL or a command stays whole to copy, if wrapped
    colour = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}
    for check in checks.run(config, options):
        done.append(check)
        if not as_json:
            errors.print(f"{check.name}: {check.status}", highlight=False, markup=False)
        table.add_row(
            escape(check.name),
            f"[{colour[check.status]}]{check.status}[/]",
            escape(check.detail),
            escape(check.fix),
        )
    if as_json:
        typer.echo(json.dumps([checks.as_dict(c) for c in done], indent=2))
    else:
        console.print(table)
        failed = [c.name for c in done if c.status == "fail"]
        verdict = f"not ready: fix {', '.join(failed)}" if failed else "ready for the day"
        console.print(verdict, highlight=False, markup=False)
    raise typer.Exit(0 if checks.passed(done) else 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
