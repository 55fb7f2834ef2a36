"""Healthy ledger throughput on one uvicorn process with tracing on (goal: >= 500 req/s).

Starts a native lab (shipped code, then the fp-drift reference fix) whose ledger exports its
spans over OTLP/HTTP to a tiny local sink, and drives it with wrk: POST-only runs (a fixed small
USD credit spread over 1,000 accounts, as a fresh workshop lab sees) and GET-only runs
(balances of those accounts), each `wrk -t1 -c8 -d15s --latency`, three times. Prints
median req/s and wrk's p50/p99 latency.

Run: .venv/bin/python benchmarks/ledger_throughput.py   (needs wrk: apt-get install -y wrk)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
from _lab import HOST, Lab, backend_note, free_port, header, median, print_table, running_lab
from sqlalchemy import text

# A fresh workshop lab: many accounts, each with a short history (the defect stays latent).
ACCOUNTS = 1000
AMOUNT = "1.25"
THREADS, CONNECTIONS, DURATION_S = 1, 8, 15
WARMUP_S = 3
GOAL_RPS = 500.0
# One balance read per four postings, as a merchant's checkout traffic roughly is.
READS_PER_WRITE = 0.25
# The workloads, in the order they run: each one's name in the tables and its wrk script's key.
WORKLOADS = (("POST /transactions", "POST"), ("GET balances", "GET"))

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\":%d,\"duration_us\":%d,\"status\":%d,\"connect\":%d," ..
    "\"read\":%d,\"write\":%d,\"timeout\":%d,\"p50_us\":%d,\"p99_us\":%d}\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""

POST_LUA = (
    rf"""
local counter = 0
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local body = string.format(
    '{{"account_id":"bench-acct-%d","direction":"credit","currency":"USD","amount":"{AMOUNT}"}}',
    counter % {ACCOUNTS})
  return wrk.format("POST", "/transactions", nil, body)
end
"""
    + _DONE
)

GET_LUA = (
    rf"""
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", string.format("/accounts/bench-acct-%d/balances", counter % {ACCOUNTS}))
end
"""
    + _DONE
)


class OtlpSink:
    """A local OTLP/HTTP trace receiver: answers 200 to POST /v1/traces and counts what came."""

    def __init__(self) -> None:
        self.requests = 0
        self.spans = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._decode = _span_counter()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path.rstrip("/") == "/v1/traces":
                    sink.record(body)
                    status = 200
                else:
                    status = 404
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.port = free_port()
        self._server = ThreadingHTTPServer((HOST, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def record(self, body: bytes) -> None:
        spans = self._decode(body) if self._decode else 0
        with self._lock:
            self.requests += 1
            self.bytes += len(body)
            self.spans += spans

    def __enter__(self) -> OtlpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _span_counter():  # type: ignore[no-untyped-def]
    """A function counting the spans in an OTLP export body, if the protobuf classes exist."""
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
    except ImportError:
        return None

    def count(body: bytes) -> int:
        message = ExportTraceServiceRequest()
        try:
            message.ParseFromString(body)
        except Exception:
            return 0
        return sum(len(scope.spans) for rs in message.resource_spans for scope in rs.scope_spans)

    return count


@dataclass
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_pct: float = math.nan


@dataclass
class Series:
    code: str
    workload: str
    runs: list[WrkRun]
    rows_after: list[int]  # postings in the table after each run


@dataclass
class LabOutcome:
    label: str
    series: list[Series]
    sink: OtlpSink | None
    served: int
    span_warnings: list[str]


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of a process (NaN where there is none)."""
    if pid is None:
        return math.nan
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return math.nan
    return times.user + times.system


def run_wrk(script: Path, url: str, seconds: int, pid: int | None = None) -> WrkRun:
    command = [
        "wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
        "-s", str(script), url,
    ]  # fmt: skip
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before) * 100
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(data[k] for k in ("status", "connect", "read", "write", "timeout"))
    return WrkRun(
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        requests=data["requests"],
        errors=errors,
        cpu_pct=cpu,
    )


def postings(lab_engine) -> int:  # type: ignore[no-untyped-def]
    with lab_engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM ledger_transactions")).scalar() or 0)


def service_pid(lab: Lab) -> int | None:
    try:
        return int(json.loads((lab.state_dir / "run" / "ledger.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def span_warnings(lab: Lab) -> list[str]:
    """Lines where the OpenTelemetry SDK said it dropped spans or failed to export."""
    try:
        log = (lab.state_dir / "logs" / "ledger.log").read_text(errors="replace")
    except OSError:
        return []
    needles = ("queue is full", "dropped", "failed to export", "exporting spans")
    return [ln for ln in log.splitlines() if any(n in ln.lower() for n in needles)]


def measure(
    solution: str | None, backend: str, scripts: dict[str, Path], repeats: int, tracing: bool
) -> LabOutcome:
    code = "shipped" if solution is None else "patched"
    series: list[Series] = []
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(OtlpSink()) if tracing else None
        endpoint = sink.endpoint if sink else None
        with running_lab(solution, backend=backend, otlp_endpoint=endpoint, only=["ledger"]) as lab:
            engine = lab.engine()
            try:
                url, pid = lab.ledger_url, service_pid(lab)
                print(f"[{lab.label}] ledger at {url} (pid {pid}), spans to {endpoint}; warm-up")
                warm = run_wrk(scripts["POST"], url, WARMUP_S)
                if warm.errors:
                    print(f"[{lab.label}] warm-up saw {warm.errors} errors")
                for workload, method in WORKLOADS:
                    runs, rows_after = [], []
                    for i in range(repeats):
                        print(f"[{lab.label}] {method} run {i + 1}/{repeats}")
                        runs.append(run_wrk(scripts[method], url, DURATION_S, pid))
                        rows_after.append(postings(engine))
                    series.append(Series(code, workload, runs, rows_after))
            finally:
                engine.dispose()
            warnings = span_warnings(lab)
        # The service flushes its last spans at shutdown, which running_lab has just done.
    served = warm.requests + sum(r.requests for s in series for r in s.runs)
    return LabOutcome(lab.label, series, sink, served, warnings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="wrk runs per workload")
    parser.add_argument(
        "--tracing", choices=("on", "off"), default="on", help="off: a comparison without OTLP"
    )
    args = parser.parse_args()
    tracing = args.tracing == "on"
    if shutil.which("wrk") is None:
        print("wrk is not installed; install it with `apt-get install -y wrk` and run again.")
        return 2
    backend = backend_note()
    mode = "ON (OTLP/HTTP to a local sink)" if tracing else "OFF (comparison run)"
    header(
        f"Ledger throughput, one uvicorn process, tracing {mode}",
        [
            f"path: native lab, {backend}; load: wrk -t{THREADS} -c{CONNECTIONS} "
            f"-d{DURATION_S}s --latency, {args.repeat} runs per workload, loopback",
            f"POST: USD credit {AMOUNT} over {ACCOUNTS} accounts; GET: their balances. "
            f"Goal: >= {GOAL_RPS:.0f} req/s.",
            "Note: the shipped POST (and GET) sums every posting of the account, so it slows "
            "as the table grows during the runs; the patched code keeps a balance row.",
            f"wrk, Postgres, the span sink and the service share this machine's "
            f"{os.cpu_count()} CPUs; 'svc CPU %' is the uvicorn process (100 = one core).",
        ],
    )
    outcomes: list[LabOutcome] = []
    with tempfile.TemporaryDirectory(prefix="wrk-lua-") as tmp:
        scripts = {"POST": Path(tmp) / "post.lua", "GET": Path(tmp) / "get.lua"}
        scripts["POST"].write_text(POST_LUA)
        scripts["GET"].write_text(GET_LUA)
        for solution in (None, "fp-drift"):
            outcomes.append(measure(solution, backend, scripts, args.repeat, tracing))
    results = [s for outcome in outcomes for s in outcome.series]
    print()

    headers = ["code", "workload"]
    headers += [f"run{i + 1} req/s" for i in range(args.repeat)]
    headers += ["median req/s", "p50 ms", "p99 ms", "svc CPU %", "errors", "rows after runs"]
    rows = []
    for s in results:
        rows.append(
            [
                s.code,
                s.workload,
                *(r.rps for r in s.runs),
                median([r.rps for r in s.runs]),
                median([r.p50_ms for r in s.runs]),
                median([r.p99_ms for r in s.runs]),
                median([r.cpu_pct for r in s.runs]),
                sum(r.errors for r in s.runs),
                " -> ".join(str(n) for n in s.rows_after),
            ]
        )
    print_table(headers, rows)
    print("(p50/p99: median over runs of wrk's per-run latency percentiles)")
    print()

    verdict_rows = []
    by_code: dict[str, dict[str, float]] = {}
    for s in results:
        by_code.setdefault(s.code, {})[s.workload] = median([r.rps for r in s.runs])
    for code, figures in by_code.items():
        post_rps, get_rps = figures["POST /transactions"], figures["GET balances"]
        # Time per request weighted 4 writes : 1 read (derived, not a separate wrk run).
        share = READS_PER_WRITE / (1 + READS_PER_WRITE)
        mix = 1 / ((1 - share) / post_rps + share / get_rps)
        for name, value in (("POST", post_rps), ("GET", get_rps), ("4:1 mix (derived)", mix)):
            met = "yes" if value >= GOAL_RPS else "NO"
            verdict_rows.append([code, name, value, met])
    print_table(["code", "workload", "median req/s", f">= {GOAL_RPS:.0f}"], verdict_rows)
    if "shipped" in by_code and "patched" in by_code:
        for workload in ("POST /transactions", "GET balances"):
            ratio = by_code["patched"][workload] / by_code["shipped"][workload]
            print(f"patched/shipped median req/s, {workload}: {ratio:.2f}")
    print()

    if not tracing:
        print("tracing was off: no span sink in this run")
        return 0
    span_rows = [
        [
            o.label,
            o.sink.requests if o.sink else 0,
            o.sink.spans if o.sink else 0,
            o.served,
            (o.sink.spans / o.served) if o.sink and o.served else 0.0,
            len(o.span_warnings),
        ]
        for o in outcomes
    ]
    print_table(
        ["lab", "OTLP exports", "spans", "HTTP requests (incl. warm-up)", "spans/req", "drop logs"],
        span_rows,
    )
    for o in outcomes:
        for line in o.span_warnings[:3]:
            print(f"  {o.label}: {line[:160]}")
    if any(o.sink is None or o.sink.requests == 0 for o in outcomes):
        print("WARNING: a lab exported no spans: tracing was not on for it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
