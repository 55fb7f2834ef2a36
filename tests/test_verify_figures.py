"""The judge's own arithmetic: check kinds, stuck windows, hung requests, triggers that acted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from drill.collectors.chain import chain_truth
from drill.scenarios import Load, ScenarioFileError, Trigger, load_program
from drill.verify import (
    Judged,
    Sample,
    judged_stretch,
    load_start,
    request_figures,
    stuck_windows,
    trigger_checks,
)
from tests.conftest import REPO_ROOT

START = 1_000_000.0
JUDGED = Judged(start=START, seconds=10.0, window=2.0, client_timeout=2.0)


def order(started: float, ms: float, ok: bool = True) -> Sample:
    return Sample("POST", "/orders", ms, ok, START + started)


def test_every_window_with_a_completion_is_alive() -> None:
    """A steady stream of successes leaves no stuck window."""
    samples = [order(t / 2, 50) for t in range(20)]
    assert stuck_windows(samples, JUDGED) == 0


def test_windows_after_the_last_success_are_stuck() -> None:
    """Successes stop at 3 s: windows [4,6), [6,8), [8,10) are stuck; failures do not count."""
    samples = [order(t / 2, 50) for t in range(7)] + [order(5, 2000, ok=False)]
    assert stuck_windows(samples, JUDGED) == 3


def test_a_success_counts_where_it_completes_not_where_it_starts() -> None:
    """An order started at 1 s that took 8 s keeps only the window it completed in alive."""
    assert stuck_windows([order(1, 8000)], JUDGED) == 4


def test_no_samples_at_all_means_every_window_is_stuck() -> None:
    """A load that got no answer at all is stuck for the whole judged stretch."""
    assert stuck_windows([], JUDGED) == 5


def test_the_judged_stretch_starts_when_locust_began_not_when_it_was_launched(
    tmp_path: Path,
) -> None:
    """A Locust that began its load 3 s after launch leaves no stuck window before then; the
    warm-up counts from that moment too."""
    load = Load(locustfile="x.py", user="U", users=1, spawn_rate=1, duration=10, host="h", warmup=1)
    (tmp_path / "locust-started").write_text(f"{START + 3:.3f}\n")
    judged = judged_stretch(load_start(tmp_path, START), 10.0, load)
    assert (judged.start, judged.seconds) == (START + 3 + 1, 9.0)
    samples = [order(3 + t / 2, 50) for t in range(20)]
    assert stuck_windows(samples, judged) == 0
    launched = judged_stretch(load_start(tmp_path / "elsewhere", START), 10.0, load)
    assert launched.start == START + 1
    assert stuck_windows(samples, launched) == 1


def test_requests_that_ran_into_the_client_timeout_hung() -> None:
    """A request within 2% of the client's 2 s patience hung; a slow but answered one did not."""
    samples = [order(0, 1990, ok=False), order(1, 1500), order(2, 2001, ok=False)]
    figures = request_figures(samples, JUDGED)
    assert figures["hung_requests"] == 2
    unlimited = Judged(start=START, seconds=10.0, window=2.0, client_timeout=None)
    assert request_figures(samples, unlimited)["hung_requests"] == 0


def test_a_trigger_that_never_acted_fails_its_check() -> None:
    """A trigger whose path ran fewer times than min_acted fails, named after its flag."""
    triggers = [
        Trigger(flag="chain.fraud_callback", variant="on", min_acted=100),
        Trigger(flag="chain.b_latency_ms", variant="slow"),
    ]
    figures = {"trigger.chain.fraud_callback.acted": 99.0}
    results = {r.name: r for r in trigger_checks(triggers, figures)}
    assert not results["trigger chain.fraud_callback=on acted"].passed
    assert results["trigger chain.fraud_callback=on acted"].kind == "invariant"
    assert not results["trigger chain.b_latency_ms=slow acted"].passed  # absent counts as 0
    figures["trigger.chain.fraud_callback.acted"] = 100.0
    figures["trigger.chain.b_latency_ms.acted"] = 1.0
    assert all(r.passed for r in trigger_checks(triggers, figures))


def test_every_committed_check_says_its_kind_and_latency_bounds_their_basis() -> None:
    """scenarios.yaml names each check invariant or latency; every latency bound has a basis."""
    program = load_program(REPO_ROOT / "scenarios.yaml")
    for scenario in program.scenarios.values():
        kinds = {check.kind for check in scenario.sla}
        assert "invariant" in kinds, "an invariant carries the verdict on the defect"
        for check in scenario.sla:
            if check.kind == "latency":
                assert check.basis and len(check.basis.split()) >= 8, check.name


@pytest.mark.parametrize(
    ("replace", "with_", "expected"),
    [
        ("kind: latency\n", "kind: invariant\n", "depends on the machine's speed: kind: latency"),
        ("kind: invariant\n", "kind: latency\n", "does not depend on the machine: kind: invariant"),
        ("kind: invariant\n", "kind: fast\n", "Input should be 'invariant' or 'latency'"),
        ("        kind: invariant\n", "", r"\.kind: Field required"),
    ],
)
def test_a_check_of_the_wrong_kind_is_refused_with_its_place(
    tmp_path: Path, replace: str, with_: str, expected: str
) -> None:
    """A latency figure called an invariant (or the reverse) is refused at file:line."""
    text = (REPO_ROOT / "scenarios.yaml").read_text()
    assert replace in text
    path = tmp_path / "scenarios.yaml"
    path.write_text(text.replace(replace, with_, 1))
    with pytest.raises(ScenarioFileError, match=expected) as info:
        load_program(path)
    assert str(info.value).startswith(f"{path}:")


def test_a_latency_bound_without_its_basis_is_refused(tmp_path: Path) -> None:
    """Removing a latency bound's basis is an error that names the check."""
    lines = (REPO_ROOT / "scenarios.yaml").read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == "basis: >")
    end = start + 1
    while lines[end].startswith(" " * (len(lines[start]) - len(lines[start].lstrip()) + 2)):
        end += 1
    path = tmp_path / "scenarios.yaml"
    path.write_text("".join(lines[:start] + lines[end:]))
    with pytest.raises(ScenarioFileError, match=r"sla\[\d+\]: a latency bound needs its basis"):
        load_program(path)


def _truth(tmp_path: Path, records: list[dict[str, object]]) -> Path:
    path = tmp_path / "truth.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_orders_succeed_by_their_last_answer(tmp_path: Path) -> None:
    """A refusal retried into a success counts once, as a success; a refusal not retried, an
    answer never given well before the end, and a wrong 409 fail; an order sent in the last
    seconds without an answer is spared; a 409 for a customer on hold succeeds."""

    def sent(ref: str, at: float, customer: str = "cust-1") -> dict[str, object]:
        return {"ref": ref, "event": "sent", "at": at, "customer_id": customer}

    def answered(ref: str, status: int, attempt: int = 1) -> dict[str, object]:
        return {"ref": ref, "event": "answered", "http_status": status, "attempt": attempt}

    truth = chain_truth(
        _truth(
            tmp_path,
            [
                sent("retried", 10),
                answered("retried", 503),
                answered("retried", 201, 2),
                sent("refused", 11),
                answered("refused", 503),
                sent("lost", 12),
                sent("wrong-409", 13),
                answered("wrong-409", 409),
                sent("held", 14, "hold-3"),
                answered("held", 409),
                sent("taken", 15),
                answered("taken", 201),
                sent("late", 98),
                {"event": "stopping", "at": 100.0},
            ],
        )  # fmt: skip
    )
    assert truth.answered["retried"]["http_status"] == 201
    assert truth.orders_succeeded() == pytest.approx(3 / 6)


def test_the_shopper_retries_a_refusal_only_after_a_short_retry_after() -> None:
    """503 with Retry-After 1: wait 1 s and try again; no header, a date, a long wait or
    another status: no retry. (In a subprocess: importing a locustfile patches with gevent.)"""
    cases = [
        ({"http_status": 503, "retry_after": "1"}, 1.0),
        ({"http_status": 503, "retry_after": None}, None),
        ({"http_status": 503, "retry_after": "Wed, 21 Oct 2026 07:28:00 GMT"}, None),
        ({"http_status": 503, "retry_after": "3"}, None),
        ({"http_status": 500, "retry_after": "1"}, None),
    ]
    script = (
        "import json, sys; from chain import RETRY_LIMIT_S, retry_wait; "
        "print(json.dumps([RETRY_LIMIT_S, [retry_wait(a) for a in json.loads(sys.argv[1])]]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps([answer for answer, _ in cases])],
        cwd=REPO_ROOT / "loadtests", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    limit, waits = json.loads(done.stdout)
    assert limit == 2.0
    assert waits == [wait for _, wait in cases]
