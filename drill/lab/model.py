"""The lab model: its services, their ports and peers, where its source and state live.

Light on purpose: `drill flags set` needs this and nothing that talks HTTP or starts processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from drill import prometheus
from drill.lab.paths import PathUnder
from drill.lab.runfiles import LAB_FILE, READY_PATH, read_json

HOST = "127.0.0.1"


class LabError(Exception):
    """A lab failure the user can act on; the message says what to do."""


@dataclass(frozen=True)
class ServiceSpec:
    """One lab service: its name, ASGI app factory, default port, extra environment and peers.

    `peers` maps an environment variable to another service's name; the child gets that
    service's URL in this lab (port offset included), so a service never hard-codes a port.
    """

    name: str
    app: str = "services.ledger.app:create_app"
    port: int = 8001
    env: dict[str, str] = field(default_factory=dict)
    peers: dict[str, str] = field(default_factory=dict)
    ready_path: str = READY_PATH


# One row per service. The chain services share one package and differ only by env. Written
# out row by row: drill guardrails reads each service's peers from these literals.
SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec("ledger", "services.ledger.app:create_app", 8001),
        ServiceSpec(
            "chain-a",
            "services.chain.app:create_app",
            8011,
            env={"CHAIN_ROLE": "a"},
            peers={"CHAIN_PRICING_URL": "chain-b"},
        ),
        ServiceSpec(
            "chain-b",
            "services.chain.app:create_app",
            8012,
            env={"CHAIN_ROLE": "b"},
            peers={"CHAIN_STOCK_URL": "chain-c"},
        ),
        ServiceSpec(
            "chain-c",
            "services.chain.app:create_app",
            8013,
            env={"CHAIN_ROLE": "c"},
            peers={"CHAIN_ORDERS_URL": "chain-a"},
        ),
        ServiceSpec(
            "feed", "services.feed.app:create_app", 8021, peers={"PROFILES_URL": "profiles"}
        ),
        ServiceSpec("profiles", "services.profiles.app:create_app", 8022),
    )
}
# Names that stand for several services on the command line (`drill restart chain`).
GROUPS: dict[str, tuple[str, ...]] = {"chain": ("chain-a", "chain-b", "chain-c")}
# Not a lab service but part of the native lab whenever its binary is on PATH. Its `app` is
# only a name: the command line comes from drill.prometheus.
PROMETHEUS = ServiceSpec(
    prometheus.NAME, prometheus.BINARY, prometheus.PORT, ready_path=prometheus.READY_PATH
)


@dataclass(frozen=True)
class ServiceStatus:
    """A service's URL, its recorded process, and whether that process runs and is ready."""

    name: str
    url: str
    pid: int | None
    running: bool
    ready: bool
    detail: str


@dataclass(init=False)
class LabConfig:
    """Where the lab's source and state live, and how its services reach their surroundings."""

    root: Path
    state_dir: Path
    port_offset: int
    database_url: str | None
    otlp_endpoint: str | None
    redis_url: str | None

    def __init__(
        self,
        root: Path,
        state_dir: Path | None = None,
        port_offset: int = 0,
        database_url: str | None = None,
        otlp_endpoint: str | None = None,
        redis_url: str | None = None,
    ) -> None:
        # Absolute paths: children run with cwd=root, and the state dir goes into their env.
        self.root = Path(root).resolve()
        self.state_dir = Path(state_dir).resolve() if state_dir else self.root / ".drill"
        self.port_offset = port_offset
        self.database_url = database_url
        self.otlp_endpoint = otlp_endpoint
        self.redis_url = redis_url

    @classmethod
    def from_env(cls, root: Path | None = None) -> LabConfig:
        """The configuration from DRILL_* and the services' own environment variables."""
        env = os.environ
        offset_text = env.get("DRILL_PORT_OFFSET", "").strip()
        try:
            offset = int(offset_text) if offset_text else 0
        except ValueError:
            raise LabError(
                f"DRILL_PORT_OFFSET must be a whole number such as 100, not {offset_text!r}"
            ) from None
        state = env.get("DRILL_STATE_DIR")
        return cls(
            root=root if root is not None else find_root(Path.cwd()),
            state_dir=Path(state) if state else None,
            port_offset=offset,
            database_url=env.get("DATABASE_URL") or None,
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
            redis_url=env.get("REDIS_URL") or None,
        )

    # The directory holding one run file per started service.
    run_dir = PathUnder("state_dir", "run")
    # The directory holding each service's stdout and stderr.
    log_dir = PathUnder("state_dir", "logs")

    def port(self, spec: ServiceSpec) -> int:
        """The port a service listens on in this lab."""
        port = spec.port + self.port_offset
        if not 0 < port < 65536:
            raise LabError(
                f"{spec.name}: port {spec.port} + DRILL_PORT_OFFSET {self.port_offset} = {port} "
                "is not a valid port; choose a smaller offset"
            )
        return port

    def url(self, spec: ServiceSpec) -> str:
        """The base URL a service answers on in this lab."""
        return f"http://{HOST}:{self.port(spec)}"

    def env(self) -> dict[str, str]:
        """The environment of a drill command (or a test's subprocess) on this lab.

        The config is the source of truth: a stray DATABASE_URL in the shell must not turn a
        SQLite lab into a Postgres one, nor an unset endpoint export traces somewhere.
        """
        env = dict(os.environ)
        env["DRILL_STATE_DIR"] = str(self.state_dir)
        env["DRILL_PORT_OFFSET"] = str(self.port_offset)
        for key, value in (
            ("DATABASE_URL", self.database_url),
            ("REDIS_URL", self.redis_url),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.otlp_endpoint),
        ):
            if value:
                env[key] = value
            else:
                env.pop(key, None)
        return env


def find_root(start: Path) -> Path:
    """The nearest directory at or above start holding scenarios.yaml and services/, else start."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / "scenarios.yaml").is_file() and (directory / "services").is_dir():
            return directory
    return start


def endpoints(config: LabConfig) -> dict[str, str]:
    """Each service's base URL: lab.json, else its port in this lab; DRILL_<NAME>_URL overrides."""
    urls = {name: config.url(spec) for name, spec in SERVICES.items()}
    document = read_json(config.state_dir / LAB_FILE)
    recorded = document.get("services") if isinstance(document, dict) else None
    if isinstance(recorded, dict):
        urls.update({str(k): v for k, v in recorded.items() if isinstance(v, str)})
    for name in urls:
        override = os.environ.get(f"DRILL_{name.upper().replace('-', '_')}_URL")
        if override:
            urls[name] = override.rstrip("/")
    return urls


def child_env(config: LabConfig, spec: ServiceSpec) -> dict[str, str]:
    """A service's environment in this lab: state dir, endpoints, its own env and peer URLs."""
    env = config.env()
    env["OTEL_SERVICE_NAME"] = spec.name
    # Line-by-line logs, so `tail -f` and the failure tail see what the service said last.
    env["PYTHONUNBUFFERED"] = "1"
    env.update(spec.env)
    for variable, peer in spec.peers.items():
        env[variable] = config.url(SERVICES[peer])
    return env
