"""`drill report`: gather every source, build the sections, write HTML or Markdown."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drill import native
from drill.report import prom, render, sources, traces
from drill.report.analysis import find_deploy
from drill.report.model import Document, Gathered, Window
from drill.report.probe import read_probes, run_probe

FORMATS = ("html", "md")


class ReportError(Exception):
    """The report cannot be written; the message says why and what to do."""


def default_out(fmt: str) -> Path:
    return Path(f"debrief-report.{fmt}")


def gather(
    config: native.LabConfig,
    window: Window,
    *,
    probe_problem: str | None = None,
    traces_wanted: bool = True,
) -> Gathered:
    """Read every source the report draws on; a source that cannot be read leaves a note."""
    found, events, notes = sources.read_journal(config.state_dir)
    runs, run_notes = sources.read_runs(config.state_dir, window, events)
    services, dark_minutes, program, program_problem = sources.read_program(config.root)
    board, board_problem = sources.read_board(config.state_dir, program)
    data = Gathered(
        window=window,
        root=config.root,
        state_dir=config.state_dir,
        events=events,
        journal_notes=notes,
        journal_found=found,
        runs=runs,
        run_notes=run_notes + ((program_problem,) if program_problem else ()),
        prometheus_url=prom.prometheus_url(config),
        probes=read_probes(config.state_dir, window),
        probe_problem=probe_problem,
        jaeger_url=traces.jaeger_url(config),
        board=board,
        board_problem=board_problem,
        scenario_services=services,
        dark_room_minutes=dark_minutes,
    )
    data.prometheus_problem, data.answers = prom.gather(data.prometheus_url, window)
    restarts = prom.restarts(data.answers.get("restarts"), window)
    restarts += [r for r in sources.read_run_files(config.state_dir) if window.holds(r.at)]
    data.restarts = tuple(sorted(restarts, key=lambda r: r.at))
    if traces_wanted:
        feed = find_deploy("n-plus-one", data.runs, data.restarts, services.get("n-plus-one", ()))
        found_traces, data.traces_problem = traces.timeline_traces(
            data.jaeger_url, window.start, window.end
        )
        if feed.at is not None and not data.traces_problem:
            # The trace store answers the newest first: ask for the time before the fix apart.
            early, _ = traces.timeline_traces(data.jaeger_url, window.start, feed.at)
            found_traces += early
        data.traces = tuple({t.trace_id: t for t in found_traces}.values())
    return data


def write_report(
    config: native.LabConfig,
    out: Path | None = None,
    fmt: str = "html",
    since_seconds: float = 3 * 3600,
    *,
    probe: bool = True,
    now: datetime | None = None,
) -> list[Path]:
    """Write the debrief; returns the files written (the report first)."""
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}: choose html or md")
    if importlib.util.find_spec("matplotlib") is None:
        raise ReportError(
            "drill report draws its plots with matplotlib, which is not installed: "
            "scripts/bootstrap report"
        )
    from drill.report.sections import build

    problem = "--no-probe: the running feed was not probed this time" if not probe else None
    if probe:
        _, problem = run_probe(config)
    end = now or datetime.now(UTC)
    window = Window(end - timedelta(seconds=since_seconds), end)
    data = gather(config, window, probe_problem=problem)
    document, _ = build(data, datetime.now(UTC))
    return write_document(document, out or default_out(fmt), fmt)


def write_document(document: Document, out: Path, fmt: str) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        out.write_text(render.to_html(document))
        return [out]
    text, files = render.to_markdown(document, out)
    out.write_text(text)
    for path, png in files.items():
        path.write_bytes(png)
    return [out, *files]


__all__ = ["FORMATS", "ReportError", "default_out", "gather", "write_report"]
