"""A verify result as a Markdown verdict table, for a CI job's summary (`verify --markdown`)."""

from __future__ import annotations

import math

from drill.verify import VerifyResult


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.4g}" if abs(value) < 10_000 else f"{value:,.0f}"


def markdown(result: VerifyResult) -> str:
    verdict = "passed" if result.passed else "FAILED"
    mode = " (clean baseline: every trigger off)" if result.baseline else ""
    lines = [
        f"### `drill verify {result.scenario}`{mode}: {verdict}",
        "",
        f"{result.load_seconds:g} s of load, {result.users} users, started {result.started_at}.",
        "",
        "| | check | kind | figure | value | bound |",
        "|---|---|---|---|---|---|",
    ]
    for check in result.checks:
        bound = f"<= {_number(check.max)}" if check.max is not None else f">= {_number(check.min)}"
        mark = "✅" if check.passed else "❌"
        lines.append(
            f"| {mark} | {check.name} | {check.kind} | `{check.figure}` "
            f"| {_number(check.value)} | {bound} |"
        )
    return "\n".join(lines) + "\n"
