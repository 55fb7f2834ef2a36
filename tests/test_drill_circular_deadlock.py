"""circular-deadlock in four directions, through the real `drill` CLI against native labs.

Shipped code with the triggers on must fail `drill verify` and stay stuck; the reference fix
must pass with the triggers still on; the shipped code with every trigger off must pass; and
every shortcut under tests/shortcuts/ must fail with a check that names what it broke. No
database: the chain keeps no state that outlives a process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from drill.collectors import read_truth
from drill.verify import read_samples
from tests.conftest import REPO_ROOT
from tests.drill_labs import native_labs
from tests.labs import check_results, clean_baseline, explain, run_drill
from tests.labs import verify as run_verify
from tests.otlp import ExportedSpan, otlp_receiver
from tests.polling import poll_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# The deadlock sets in within seconds; 20 s of load also gives the baseline 600+ orders.
VERIFY_SECONDS = "20"
SHIPPED_SECONDS = "40"
ORDER = {"customer_id": "cust-1", "lines": [{"sku": "MUG-STONEWARE", "quantity": 1}]}
SHORTCUTS = REPO_ROOT / "tests" / "shortcuts"
# A flag flip reaches the services in about 0.5 s; a loaded CI machine may take several.
FLAG_WAIT_S = 30


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[object]:
    """Start the chain services from a tree (patched or not) on free ports; stop them after."""
    with native_labs(tmp_path, "chain") as labs:

        def start(
            patch: str | None = None,
            otlp_endpoint: str | None = None,
            shortcuts: tuple[Path, ...] = (),
        ) -> tuple[Path, dict[str, str]]:
            # Export promptly: the test waits for the spans, not for the default 5 s batch.
            tracing = (
                {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
                if otlp_endpoint
                else {}
            )
            return labs.start(patch, shortcuts, env=tracing)

        yield start


def url(env: dict[str, str], port: int = 8011) -> str:
    return f"http://127.0.0.1:{port + int(env['DRILL_PORT_OFFSET'])}"


def verify(root: Path, env: dict[str, str], *extra: str) -> tuple[int, dict]:
    return run_verify(root, env, "circular-deadlock", "--duration", VERIFY_SECONDS, *extra)


def order_within(env: dict[str, str], seconds: float) -> bool:
    try:
        response = httpx.post(url(env) + "/orders", json=ORDER, timeout=seconds, trust_env=False)
    except httpx.TimeoutException:
        return False
    return response.status_code == 201


def callback_acted(env: dict[str, str]) -> float:
    """How often chain-c has taken the fraud-callback path so far (GET /drill/triggers)."""
    acted = httpx.get(url(env, 8013) + "/drill/triggers", timeout=5, trust_env=False).json()
    return float(sum(acted.get("chain.fraud_callback", {}).values()))


def failed_checks(result: Any) -> set[str]:
    return {check["figure"] for check in result["checks"] if not check["passed"]}


@pytest.mark.drill
def test_shipped_code_with_triggers_deadlocks_and_stays_stuck(lab) -> None:  # type: ignore[no-untyped-def]
    """Shipped chain + triggers: throughput falls to zero, it stays stuck, a restart recovers."""
    root, env = lab()
    # The scenario's full 40 s: when the cycle closes varies from run to run (about 3 s on an
    # idle machine, up to 17 s seen in CI), and the tail below must come after it.
    code, result = run_verify(root, env, "circular-deadlock", "--duration", SHIPPED_SECONDS)
    assert code == 1, explain(result)
    figures = result["figures"]
    # Throughput falls to zero: no order started in the last third of the load succeeded.
    # (The success ratio alone says little: it depends on when in the run the cycle closed.)
    raw = read_samples(Path(result["run_dir"]) / "samples.tsv")
    samples = [(s.started, s.ok) for s in raw if s.started]
    assert samples, "verify recorded when each order started"
    tail_from = min(started for started, _ in samples) + float(SHIPPED_SECONDS) * 2 / 3
    tail = [ok for started, ok in samples if started >= tail_from]
    assert tail, "the shoppers kept sending orders until the end"
    assert not any(tail), "orders still succeeded at the end of the load"
    assert figures["max_ms"] >= 2000, "hung orders run into the client's 2 s timeout"
    assert figures["chain.orders_after_load"] == 0, "the chain stays stuck after the load"
    assert not check_results(result)["chain.orders_succeeded"]
    # Stuck, yet the probes and the metrics still answer: every worker of chain-a is taken.
    metrics = httpx.get(url(env) + "/metrics", timeout=3, trust_env=False).text
    assert 'chain_workers_busy{service="chain-a"} 8.0' in metrics
    assert httpx.get(url(env) + "/readyz", timeout=3, trust_env=False).status_code == 200
    # A second verify refuses to measure a chain that is already stuck, and says what to do.
    again = run_drill(root, env, "verify", "circular-deadlock", "--duration", "5")
    assert again.returncode == 2
    assert "drill restart chain" in " ".join(again.stderr.split())
    flags = json.loads((root / ".drill" / "flags.json").read_text())["flags"]
    assert flags["chain.fraud_callback"]["defaultVariant"] == "off", "verify restores the flags"
    restarted = run_drill(root, env, "restart", "chain")
    assert restarted.returncode == 0, restarted.stderr
    assert order_within(env, 3), "drill restart chain recovers the stuck chain"


@pytest.mark.drill
def test_reference_fix_passes_with_triggers_on(lab) -> None:  # type: ignore[no-untyped-def]
    """solutions/circular-deadlock.patch applied: every SLA holds with the triggers still on."""
    root, env = lab(patch="circular-deadlock")
    code, result = verify(root, env)
    assert code == 0, explain(result)
    figures = result["figures"]
    # Per order: a refused order is placed once more after its Retry-After.
    assert figures["chain.orders_succeeded"] >= 0.99
    assert figures["chain.orders_after_load"] == 1
    # The business rules held on real traffic: customers on hold were among the shoppers, and
    # every confirmed order holds its stock once at the right total.
    assert figures["chain.confirmed_orders"] >= 300 * 0.8
    assert figures["chain.held_orders_confirmed"] == 0
    assert figures["chain.orders_not_held_once"] == 0
    assert figures["chain.total_mismatches"] == 0
    truth = read_truth(Path(result["run_dir"]) / "truth.jsonl")
    held = [r for r in truth if r["event"] == "sent" and r["customer_id"].startswith("hold-")]
    assert len(held) >= 10, "the load includes customers on hold"
    # The C→A check still happens, off the request path: chain-c calls chain-a.
    metrics = httpx.get(url(env, 8013) + "/metrics", timeout=3, trust_env=False).text
    assert (
        'peer="chain-a",route="/customers/{customer_id}/check",service="chain-c",status="200"'
        in (metrics)
    )
    assert 'chain_breaker_state{peer="chain-a",service="chain-c"} 0.0' in metrics


@pytest.mark.drill
def test_shipped_code_passes_the_clean_baseline(lab) -> None:  # type: ignore[no-untyped-def]
    """Shipped chain with every trigger off is healthy under the same load: 'fine in staging'."""
    result = clean_baseline(lab, verify)
    assert result["figures"]["requests"] >= 300


def test_drill_down_and_up_recover_a_stuck_chain(lab) -> None:  # type: ignore[no-untyped-def]
    """drill down stops a deadlocked chain (SIGKILL if need be); drill up serves again."""
    root, env = lab()
    assert run_drill(root, env, "flags", "set", "chain.fraud_callback", "on").returncode == 0
    assert run_drill(root, env, "flags", "set", "chain.b_latency_ms", "very_slow").returncode == 0

    def stuck() -> None:
        with httpx.Client(trust_env=False) as client:
            for _ in range(12):  # more orders in flight than chain-a has workers
                try:
                    client.post(url(env) + "/orders", json=ORDER, timeout=0.05)
                except httpx.TimeoutException:
                    pass
        assert not order_within(env, 2), "an order still completed within 2 s"

    # Until the flags reach the services, the burst passes through; then the cycle closes.
    poll_until(stuck, "the chain sticks under a burst with the triggers on", timeout=FLAG_WAIT_S)
    down = run_drill(root, env, "down")
    assert down.returncode == 0, down.stderr
    assert "chain-a" in down.stdout
    up = run_drill(root, env, "up", "--native", "--only", "chain")
    assert up.returncode == 0, up.stderr
    assert order_within(env, 5), "the chain serves again after drill down / drill up"


def test_one_order_trace_id_is_in_all_three_logs_and_the_exported_spans(lab) -> None:  # type: ignore[no-untyped-def]
    """With the callback on, one order's x-trace-id is in all three services' log files, and
    the spans they export over OTLP hold the A→B→C→A path under that trace id."""
    with otlp_receiver() as receiver:
        root, env = lab(otlp_endpoint=receiver.endpoint)
        assert run_drill(root, env, "flags", "set", "chain.fraud_callback", "on").returncode == 0

        def order_through_the_callback() -> str:
            before = callback_acted(env)
            response = httpx.post(url(env) + "/orders", json=ORDER, timeout=10, trust_env=False)
            assert response.status_code == 201, response.text
            assert callback_acted(env) > before, "chain-c has not seen the callback flag yet"
            return response.headers["x-trace-id"]

        trace_id = poll_until(
            order_through_the_callback, "an order that takes the C→A callback", FLAG_WAIT_S
        )
        logs = root / ".drill" / "logs"
        wanted_spans = {
            "chain-a POST /orders": lambda s: s.service == "chain-a" and "/orders" in s.name,
            "chain-b POST /quotes": lambda s: s.service == "chain-b",
            "chain-c POST /reservations": lambda s: s.service == "chain-c",
            "chain-a GET /customers/{customer_id}/check": (
                lambda s: s.service == "chain-a" and "/check" in s.name
            ),
        }

        def logged_and_exported() -> tuple[dict[str, list[dict]], list[ExportedSpan]]:
            found: dict[str, list[dict]] = {}
            for name in ("chain-a", "chain-b", "chain-c"):
                lines = (logs / f"{name}.log").read_text().splitlines()
                entries = [json.loads(line) for line in lines if trace_id in line]
                if entries:
                    found[name] = entries
            missing = sorted({"chain-a", "chain-b", "chain-c"} - set(found))
            assert not missing, f"log lines of {', '.join(missing)}"
            routes = {e["msg"] for e in found["chain-a"]}
            assert {"POST /orders 201", "GET /customers/{customer_id}/check 200"} <= routes, (
                f"chain-a's log lines for the order and the check (found: {sorted(routes)})"
            )
            spans = receiver.spans(trace_id)
            servers = [s for s in spans if s.kind == Span.SpanKind.SPAN_KIND_SERVER]
            absent = [what for what, match in wanted_spans.items() if not any(map(match, servers))]
            assert not absent, f"server spans {absent} (received: {[s.name for s in servers]})"
            return found, spans

        # Wait for every span named, not for one per service: chain-a's check span ends (and
        # is exported) before its order span, which once let a loop stop without the order.
        # Generous, because exports on a loaded machine lag behind the answer.
        found, received = poll_until(
            logged_and_exported, f"trace {trace_id} in the logs and the exported spans", 60
        )
    assert all(
        e["trace_id"] == trace_id and e["service"] == n for n, es in found.items() for e in es
    )
    # The exported spans: A's order → B's quote → C's reservation → A's customer check, each
    # server span a descendant of the one before it.
    spans = {span.span_id: span for span in received}
    servers = [s for s in received if s.kind == Span.SpanKind.SPAN_KIND_SERVER]

    def ancestors(span: ExportedSpan) -> list[str]:
        chain = []
        while span.parent_span_id in spans:
            span = spans[span.parent_span_id]
            chain.append(span.span_id)
        return chain

    order, quote, reservation, check = (
        next(s for s in servers if match(s)) for match in wanted_spans.values()
    )
    assert order.parent_span_id == "", "the order is the root of its trace"
    assert order.span_id in ancestors(quote)
    assert quote.span_id in ancestors(reservation)
    assert reservation.span_id in ancestors(check)


@pytest.mark.drill
def test_shortcut_dropping_the_fraud_check_fails(lab) -> None:  # type: ignore[no-untyped-def]
    """`if False:` instead of the customer check never deadlocks, but confirms customers on
    hold and never takes the callback path: verify fails and names both."""
    root, env = lab(shortcuts=(SHORTCUTS / "circular-deadlock-drop-fraud-check.patch",))
    code, result = verify(root, env)
    assert code == 1, explain(result)
    failed = failed_checks(result)
    assert {"chain.held_orders_confirmed", "trigger.chain.fraud_callback.acted"} <= failed, explain(
        result
    )


@pytest.mark.drill
def test_shortcut_waiting_forever_for_an_order_fails(lab) -> None:  # type: ignore[no-untyped-def]
    """A shopper without a timeout hides hung orders from the timeout count; the orders it sent
    and never got back still fail verify, by name."""
    root, env = lab(shortcuts=(SHORTCUTS / "circular-deadlock-infinite-client-timeout.patch",))
    # The scenario's full 40 s, as for the shipped direction: the orders stuck when the cycle
    # closes must have been sent well before the load stops.
    code, result = run_verify(root, env, "circular-deadlock", "--duration", SHIPPED_SECONDS)
    assert code == 1, explain(result)
    assert "chain.unanswered_orders" in failed_checks(result), explain(result)
    assert result["figures"]["hung_requests"] == 0, "no order timed out: the shortcut worked"


def test_reference_fix_sheds_load_at_twice_the_concurrency(lab) -> None:  # type: ignore[no-untyped-def]
    """32 shoppers arriving together each second: the fixed chain stays correct, takes or
    refuses (503 with Retry-After) every order, and no order waits for the timeout."""
    root, env = lab(patch="circular-deadlock")
    env["CHAIN_ARRIVALS"] = "bursty"
    code, result = verify(root, env, "--users", "32")
    figures = result["figures"]
    for figure in (
        "hung_requests",
        "stuck_windows",
        "chain.unanswered_orders",
        "chain.total_mismatches",
        "chain.held_orders_confirmed",
        "chain.orders_not_held_once",
    ):
        assert figures[figure] == 0, f"{figure}: {explain(result)}"
    truth = read_truth(Path(result["run_dir"]) / "truth.jsonl")
    answers = [record for record in truth if record["event"] == "answered"]
    taken = sorted(a["ms"] for a in answers if a["http_status"] in (201, 409))
    refused = sorted(a["ms"] for a in answers if a["http_status"] == 503)
    assert len(taken) + len(refused) == len(answers), "every order was taken or refused"
    assert all(a["retry_after"] for a in answers if a["http_status"] == 503)
    assert taken, explain(result)
    # How fast taken orders and refusals answer depends on the machine: benchmarks/degradation.py
    # and benchmarks/chain_deadlock.py measure it; here only what holds on any machine.
