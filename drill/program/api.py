"""The runner's API on port 8000 (plus DRILL_PORT_OFFSET): `/metrics` and `GET /program`.

Both show the room's view (drill.program.room): the culprit, triggers and decoys only in
reveal mode.

A small FastAPI app served by uvicorn on a thread of the runner process, bound to 127.0.0.1,
and also to the address `drill program start --listen` gives (the compose lab's Prometheus
scrapes the runner over the Docker bridge: `--listen docker`).
The runner publishes a snapshot after every tick; the routes only read it. Teams' endpoints
will join this app later, so it is an app factory with its state on `app.state`.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
import threading
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Info, generate_latest

from drill.program.room import revealed, room_view
from drill.prometheus import RUNNER_PORT

__all__ = ["RUNNER_PORT", "ApiServer", "Board", "create_app", "listen_address"]
HOST = "127.0.0.1"
DOCKER_BRIDGE = "docker0"
SIOCGIFADDR = 0x8915  # linux/sockios.h: an interface's address


class Board:
    """The latest snapshot of the program, as the runner published it after a tick."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] = {"running": False}

    def publish(self, snapshot: dict[str, Any]) -> None:
        with self._lock:
            self._snapshot = snapshot

    def read(self) -> dict[str, Any]:
        with self._lock:
            return self._snapshot


class ProgramMetrics:
    """The runner's metrics, in a registry of its own (a second app registers nothing twice)."""

    def __init__(self, scenarios: tuple[str, ...]) -> None:
        self.registry = CollectorRegistry()
        self.scenarios = scenarios
        self.phase = Info(
            "drill_program_phase",
            "The current agenda entry: name, type (phase, break or finished) and index",
            registry=self.registry,
        )
        self.left = self._gauge(
            "drill_program_seconds_left", "Program seconds left in the current agenda entry"
        )
        self.elapsed = self._gauge("drill_program_elapsed_seconds", "Program time, in seconds")
        self.paused = self._gauge("drill_program_paused", "1 while the program clock is paused")
        self.speed = self._gauge("drill_program_speed", "Program seconds per wall-clock second")
        self.live = self._gauge(
            "drill_program_live_scenario",
            "1 for each scenario whose triggers the current phase runs; all 0 until reveal mode",
            "scenario",
        )
        self.live_count = self._gauge(
            "drill_program_live_scenarios",
            "How many scenarios' triggers the current phase runs (names wait for reveal mode)",
        )
        self.traffic = self._gauge(
            "drill_program_traffic", "1 for each scenario whose background traffic runs", "scenario"
        )

    def _gauge(self, name: str, documentation: str, *labels: str) -> Gauge:
        """A gauge in this registry, with these label names."""
        return Gauge(name, documentation, labels, registry=self.registry)

    def update(self, snapshot: dict[str, Any]) -> None:
        self.phase.info(
            {
                "phase": str(snapshot.get("entry") or ""),
                "type": str(snapshot.get("type") or "stopped"),
                "index": str(snapshot.get("index", "")),
            }
        )
        self.left.set(float(snapshot.get("time_left", 0.0)))
        self.elapsed.set(float(snapshot.get("elapsed", 0.0)))
        self.paused.set(1.0 if snapshot.get("paused") else 0.0)
        self.speed.set(float(snapshot.get("speed", 0.0)))
        live, traffic = set(snapshot.get("live", ())), set(snapshot.get("traffic", ()))
        self.live_count.set(float(len(live)))
        named = live if revealed(snapshot) else set()  # the dark room stays dark
        for name in self.scenarios:
            self.live.labels(scenario=name).set(1.0 if name in named else 0.0)
            self.traffic.labels(scenario=name).set(1.0 if name in traffic else 0.0)


def get_board(request: Request) -> Board:
    board: Board = request.app.state.board
    return board


BoardDep = Annotated[Board, Depends(get_board)]


def create_app(board: Board | None = None, scenarios: tuple[str, ...] = ()) -> FastAPI:
    app = FastAPI(title="3 A.M. Drill runner", docs_url=None, redoc_url=None)
    app.state.board = board or Board()
    app.state.metrics = ProgramMetrics(scenarios)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/program")
    def program(board: BoardDep) -> dict[str, Any]:
        """Where the program is: entry, time left, what comes next, hints, traffic; the live
        scenarios, flags and decoys only once reveal mode is on (drill.program.room)."""
        return room_view(board.read())

    @app.get("/metrics")
    def metrics(request: Request, board: BoardDep) -> Response:
        program_metrics: ProgramMetrics = request.app.state.metrics
        program_metrics.update(board.read())
        return Response(generate_latest(program_metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def interface_address(name: str) -> str:
    """The IPv4 address of a network interface, e.g. docker0 (the Docker bridge's gateway)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("256s", name[:15].encode())
        answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)
    return socket.inet_ntoa(answer[20:24])


def listen_address(value: str) -> str:
    """`--listen`: an IP address, or `docker` for the Docker bridge's gateway (docker0), the
    address compose's Prometheus reaches as host.docker.internal. ValueError says what is wrong."""
    if value == "docker":
        try:
            return interface_address(DOCKER_BRIDGE)
        except OSError as exc:
            raise ValueError(
                f"--listen docker: no {DOCKER_BRIDGE} interface here ({exc.strerror}); is Docker "
                "running? Give the bridge's address instead: --listen ADDRESS"
            ) from None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"--listen {value!r} is not an IP address (or `docker`)") from None


class ApiServer:
    """uvicorn on a thread of the runner (uvicorn leaves signals to the main thread).

    The socket is bound in `start`, so an address that cannot be used is an OSError there,
    not a thread that dies quietly.
    """

    def __init__(self, app: FastAPI, port: int, host: str = HOST) -> None:
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.address = (host, port)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> None:
        host, port = self.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(self.address)
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name=f"api {host}", daemon=True
        )
        self.thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
