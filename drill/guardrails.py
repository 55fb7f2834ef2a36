"""`drill guardrails`: the lab's own checks for the defect classes that got past review.

Three tools, one report, each finding as `file:line rule why`:

- semgrep with the rules in `guardrails/semgrep/`: money in binary floats, HTTP without a
  timeout, blocking work inside `async def`, a query per row of another query;
- ruff's flake8-async (`ASYNC`) and request-without-timeout (`S113`) rules;
- the call-graph check: `guardrails/peers.yaml` declares whom each service calls, on the request
  path (`calls`) or off it (`notifies`); the check derives the same from the code, reports
  where the two disagree, and fails on any cycle of `calls`.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

RULES_DIR = Path("guardrails") / "semgrep"
MANIFEST = Path("guardrails") / "peers.yaml"
DEFAULT_PATHS = ("services", "drill", "faults")
# Where the semgrep and ruff executables may live besides PATH: semgrep pins OpenTelemetry
# below the lab's, so `scripts/bootstrap guardrails` gives it a venv of its own.
TOOLS_VENV = ".venv-guardrails"
# anyio.sleep(0) spelled instead of anyio.lowlevel.checkpoint(): a style point, not an outage.
RUFF_IGNORE = ("ASYNC115",)

Kind = Literal["calls", "notifies"]
KINDS: tuple[Kind, ...] = ("calls", "notifies")

HTTP_WHY = (
    "An HTTP call without a timeout waits as long as the peer does: when the peer stops "
    "answering, every worker ends up waiting on it and the service hangs with no error to read."
)
BLOCKING_WHY = (
    "A blocking call inside `async def` stops the event loop while it waits: every request "
    "this process serves queues behind one slow call."
)
ASYNC_WHY = (
    "An async function that cannot be cancelled or never yields holds the event loop, so "
    "timeouts fire late or not at all when a dependency is slow."
)
WHY = {
    "peers-cycle": (
        "Services that wait on each other in a circle on the request path exhaust each other's "
        "workers under load, and then nothing completes until every one of them is restarted."
    ),
    "peers-drift": (
        "The manifest is the service map you reason from at 3 a.m.; code that calls a peer "
        "differently sends you looking in the wrong place."
    ),
    "peers-config": (
        "A peer URL wired to another service than the manifest names sends requests where "
        "nobody expects them, and the lab runs a call graph no one reviewed."
    ),
}
SEMGREP_MISSING = (
    "semgrep is not installed: run `scripts/bootstrap guardrails` (it syncs guardrails/uv.lock "
    "into .venv-guardrails), or `pipx install semgrep`, or set DRILL_SEMGREP to its path. "
    "Not into .venv: semgrep pins OpenTelemetry below the lab's."
)
RUFF_MISSING = (
    "ruff is not installed: run `scripts/bootstrap test` (or `scripts/bootstrap guardrails`), "
    "or set DRILL_RUFF to its path"
)
CLIENT_FACTORIES = {"create_client", "create_async_client"}
HTTP_VERBS = {"get", "post", "put", "patch", "delete", "head", "options", "api_route"}
NOT_A_CALL = {"close", "aclose"}


class GuardrailsError(Exception):
    """The checks could not run; the message says what to install or fix."""


@dataclass(frozen=True, order=True)
class Finding:
    """One problem: where, which rule, and why it matters."""

    path: str
    line: int
    rule: str
    why: str
    detail: str = ""

    def render(self) -> str:
        said = f"{self.detail}: " if self.detail else ""
        return f"{self.path}:{self.line} {self.rule} {said}{self.why}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def run(root: Path, paths: Sequence[Path] = ()) -> Report:
    """Every check on the tree at root, reported for the paths given (default: the whole lab).

    The call graph is always built from the whole tree; with paths, only its findings in those
    paths are shown, so a commit that fixes one drill is not held up by another's defects.
    Paths under guardrails/ (a rule or the manifest changed) mean the whole lab.
    """
    root = root.resolve()
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise GuardrailsError(f"no such file or directory: {', '.join(missing)}")
    given = [path.resolve() for path in paths]
    if any(_within(path, root / "guardrails") for path in given):
        given = []
    targets = _targets(root, given)
    report = Report()
    # The call graph first: a broken manifest stops the run before semgrep's seconds.
    graph = _timed(report, "call graph", call_graph, root, report.notes)
    shown = [f for f in graph if not given or any(_within(root / f.path, p) for p in given)]
    if len(shown) < len(graph):
        report.notes.append(
            f"call graph: {len(graph) - len(shown)} finding(s) outside the paths given "
            "(run without paths to see them)"
        )
    report.findings.extend(shown)
    if targets:
        report.findings.extend(_timed(report, "semgrep", semgrep, root, targets))
        report.findings.extend(_timed(report, "ruff", ruff, root, targets))
    else:
        report.notes.append("semgrep and ruff: no Python files among the paths given")
    report.findings = sorted(set(report.findings))
    return report


def _within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def _timed(
    report: Report, name: str, check: Callable[[Path, Any], list[Finding]], root: Path, arg: Any
) -> list[Finding]:
    started = time.perf_counter()
    try:
        return check(root, arg)
    finally:
        report.seconds[name] = time.perf_counter() - started


def _targets(root: Path, paths: Sequence[Path]) -> list[str]:
    """The Python files to scan, as the report shows them; directories are walked here.

    semgrep skips `tests/` and the like inside a directory it is given (its default ignore
    list), so it gets files: a directory named on the command line is scanned whole.
    """
    given = list(paths) or [root / name for name in DEFAULT_PATHS if (root / name).exists()]
    files: list[Path] = []
    for path in given:
        if path.is_dir():
            files.extend(
                found
                for found in sorted(path.rglob("*.py"))
                if not any(
                    part.startswith(".") or part == "__pycache__"
                    for part in found.relative_to(path).parts
                )
            )
        elif path.suffix in (".py", ".pyi"):  # pre-commit may pass YAML too: not ours to scan
            files.append(path)
    return list(dict.fromkeys(_shown(root, path) for path in files))


def _shown(root: Path, path: Path) -> str:
    """A path as the report shows it: relative to root when inside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def find_tool(name: str, root: Path) -> str | None:
    """The executable for a tool: $DRILL_<NAME>, this Python's venv, .venv-guardrails, PATH."""
    override = os.environ.get(f"DRILL_{name.upper()}")
    if override:
        return override
    # The checked tree's tools venv, then the one beside the drill package doing the checking.
    checkout = Path(__file__).resolve().parents[1]
    for directory in (
        Path(sys.executable).parent,
        root / TOOLS_VENV / "bin",
        checkout / TOOLS_VENV / "bin",
    ):
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def _tool_json(name: str, command: list[str], root: Path) -> Any:
    """What a tool run in root printed as JSON; a GuardrailsError with its tail if not JSON."""
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise GuardrailsError(f"{command[0]} could not start: {exc}") from None
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise GuardrailsError(f"{name} failed (exit {done.returncode}): {tail}") from None


# -- semgrep -----------------------------------------------------------------------------------


def semgrep(root: Path, targets: Sequence[str]) -> list[Finding]:
    """The lab's semgrep rules (guardrails/semgrep/) on the targets, offline."""
    executable = find_tool("semgrep", root)
    if executable is None:
        raise GuardrailsError(SEMGREP_MISSING)
    rules = root / RULES_DIR
    if not rules.is_dir():
        raise GuardrailsError(f"no semgrep rules at {rules}")
    output = _tool_json(
        "semgrep",
        [
            executable,
            "scan",
            "--config",
            str(rules),
            "--json",
            "--metrics=off",
            "--disable-version-check",
            "--no-rewrite-rule-ids",
            "--quiet",
            *targets,
        ],
        root,
    )
    errors = [e for e in output.get("errors", []) if e.get("level") == "error"]
    if errors:
        said = "; ".join(" ".join(str(e.get("message", e)).split()) for e in errors)
        raise GuardrailsError(f"semgrep could not scan: {said}")
    trees = _Trees()
    findings = []
    for result in output.get("results", []):
        extra = result.get("extra", {})
        path = _shown(root, root / result["path"])
        line, column = result["start"]["line"], result["start"]["col"]
        if extra.get("metadata", {}).get("innermost-function") == "async":
            if not trees.innermost_is_async(root / result["path"], line, column - 1):
                continue
        why = " ".join(extra.get("message", "").split())
        findings.append(Finding(path, line, result["check_id"], why))
    return findings


class _Trees:
    """Parsed files, to ask what encloses a finding (semgrep cannot tell async functions)."""

    def __init__(self) -> None:
        self._trees: dict[Path, ast.Module | None] = {}

    def innermost_is_async(self, path: Path, line: int, column: int) -> bool:
        if path not in self._trees:
            try:
                self._trees[path] = ast.parse(path.read_text(), str(path))
            except (OSError, SyntaxError, ValueError):
                self._trees[path] = None
        tree = self._trees[path]
        if tree is None:
            return True  # keep what semgrep found rather than hide it
        innermost: ast.AST | None = None
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                # The body only: decorators and defaults run where the function is defined.
                first = node.body[0]
                start = (first.lineno, first.col_offset)
            elif isinstance(node, ast.Lambda):
                start = (node.body.lineno, node.body.col_offset)
            else:
                continue
            end = (node.end_lineno or node.lineno, node.end_col_offset or 0)
            if start <= (line, column) < end and (
                innermost is None or _starts_after(node, innermost)
            ):
                innermost = node
        return isinstance(innermost, ast.AsyncFunctionDef)


def _starts_after(node: ast.AST, other: ast.AST) -> bool:
    here = (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))
    there = (getattr(other, "lineno", 0), getattr(other, "col_offset", 0))
    return here > there


# -- ruff --------------------------------------------------------------------------------------


def ruff(root: Path, targets: Sequence[str]) -> list[Finding]:
    """ruff's ASYNC and S113 rules on the targets, with the project's ruff settings."""
    executable = find_tool("ruff", root)
    if executable is None:
        raise GuardrailsError(RUFF_MISSING)
    results = _tool_json(
        "ruff",
        [
            executable,
            "check",
            "--select",
            "ASYNC,S113",
            "--ignore",
            ",".join(RUFF_IGNORE),
            "--output-format",
            "json",
            "--exit-zero",
            "--no-fix",
            "--no-cache",
            *targets,
        ],
        root,
    )
    findings = []
    for result in results:
        code = str(result["code"])
        # ASYNC2xx are blocking calls (HTTP, subprocess, files, sleep); ASYNC1xx the rest.
        blocking = code.startswith("ASYNC2")
        why = HTTP_WHY if code == "S113" else BLOCKING_WHY if blocking else ASYNC_WHY
        path = _shown(root, Path(result["filename"]))
        detail = " ".join(str(result.get("message", "")).split())
        findings.append(Finding(path, result["location"]["row"], f"ruff:{code}", why, detail))
    return findings


# -- the call graph ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    """One service calling another: how, through which URL setting, and where that is said."""

    source: str
    peer: str
    url: str
    kind: Kind
    path: str
    line: int


@dataclass(frozen=True)
class Service:
    """A lab service as the manifest declares it."""

    name: str
    app: str
    env: dict[str, str]
    line: int
    edges: tuple[Edge, ...]


def call_graph(root: Path, notes: list[str] | None = None) -> list[Finding]:
    """The manifest against the code (and the native and compose wiring), and no cycle."""
    notes = notes if notes is not None else []
    services = load_manifest(root)
    findings: list[Finding] = []
    code_edges: list[Edge] = []
    for service in services.values():
        derived, unresolved = derive_edges(root, service)
        code_edges.extend(derived)
        findings.extend(unresolved)
        findings.extend(_compare(service, derived))
    findings.extend(_check_native(root, services, notes))
    findings.extend(_check_compose(root, services, notes))
    declared = [edge for service in services.values() for edge in service.edges]
    findings.extend(_cycles(code_edges + declared))
    return findings


def load_manifest(root: Path) -> dict[str, Service]:
    """guardrails/peers.yaml, validated; a bad file says where and what was expected."""
    path = root / MANIFEST
    shown = MANIFEST.as_posix()
    try:
        document = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except OSError as exc:
        raise GuardrailsError(f"{shown}: cannot read the peers manifest ({exc})") from None
    except yaml.YAMLError as exc:
        raise GuardrailsError(f"{shown}: not valid YAML: {exc}") from None

    def fail(node: yaml.Node | None, where: str, expected: str) -> GuardrailsError:
        line = node.start_mark.line + 1 if node is not None else 1
        return GuardrailsError(f"{shown}:{line}: {where}: expected {expected}")

    def mapping(node: yaml.Node | None, where: str) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise fail(node, where, "a mapping")
        return {str(key.value): value for key, value in node.value}

    def text(node: yaml.Node | None, where: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
            raise fail(node, where, "a non-empty string")
        return str(node.value)

    top = mapping(document, "the file")
    if set(top) != {"services"}:
        raise fail(document, "the file", "one key, `services`")
    services: dict[str, Service] = {}
    for name, node in mapping(top["services"], "services").items():
        where = f"services.{name}"
        entry = mapping(node, where)
        unknown = set(entry) - {"app", "env", *KINDS}
        if unknown or "app" not in entry:
            raise fail(node, where, f"`app` and optionally `env`, {', '.join(KINDS)}")
        env = {
            key: text(value, f"{where}.env.{key}")
            for key, value in mapping(entry.get("env") or _EMPTY, f"{where}.env").items()
        }
        edges = []
        for kind in KINDS:
            listed = entry.get(kind)
            if listed is None:
                continue
            if not isinstance(listed, yaml.SequenceNode):
                raise fail(listed, f"{where}.{kind}", "a list of {peer, url}")
            for index, item in enumerate(listed.value):
                at = f"{where}.{kind}[{index}]"
                fields = mapping(item, at)
                if set(fields) != {"peer", "url"}:
                    raise fail(item, at, "`peer` (a service) and `url` (its URL variable)")
                edges.append(
                    Edge(
                        name,
                        text(fields["peer"], f"{at}.peer"),
                        text(fields["url"], f"{at}.url"),
                        kind,
                        shown,
                        item.start_mark.line + 1,
                    )
                )
        services[name] = Service(
            name, text(entry["app"], f"{where}.app"), env, node.start_mark.line + 1, tuple(edges)
        )
    for service in services.values():
        for edge in service.edges:
            if edge.peer not in services:
                raise GuardrailsError(
                    f"{shown}:{edge.line}: services.{service.name}: peer {edge.peer!r} is not "
                    f"a service in the manifest (known: {', '.join(services)})"
                )
    return services


_EMPTY = yaml.MappingNode("tag:yaml.org,2002:map", [])


@dataclass
class _Module:
    path: Path
    shown: str
    tree: ast.Module


@dataclass(frozen=True)
class _Client:
    """An HTTP client a service makes: to whom, from which URL setting, kept under which names."""

    peer: str
    url: str
    attributes: frozenset[str]
    path: str
    line: int


def derive_edges(root: Path, service: Service) -> tuple[list[Edge], list[Finding]]:
    """The peers a service's code calls, and whether any request path waits on each call.

    A client's peer and URL setting come from its `create_client` call (a literal, or a role
    table such as chain's PEERS indexed by the role setting). Its uses are the attributes it is
    kept under on `app.state`. A use in a route handler, or in anything a route handler refers
    to, is on the request path: `calls`. A client whose every use is off it (a background
    queue, a startup task) `notifies`. A client the check cannot follow counts as `calls`.
    """
    module_name = service.app.partition(":")[0]
    package = root.joinpath(*module_name.split(".")[:-1])
    if not package.is_dir():
        missing = Finding(MANIFEST.as_posix(), service.line, "peers-drift", WHY["peers-drift"])
        return [], [_detail(missing, f"{service.name}: no package at {_shown(root, package)}")]
    modules = [
        _Module(path, _shown(root, path), _parse(path)) for path in sorted(package.glob("*.py"))
    ]
    settings_env = _settings_env(modules)
    clients, unresolved = _clients(modules, service, settings_env)
    functions = _functions(modules)
    reachable = _reachable(functions)
    aliases = _state_aliases(modules)
    edges = []
    for client in clients:
        uses = list(_uses(functions, client.attributes, aliases))
        on_path = [use for use in uses if use[0] in reachable]
        kind: Kind = "calls" if on_path or not uses else "notifies"
        _, path, line = (
            on_path[0] if on_path else uses[0] if uses else ("", client.path, client.line)
        )
        edges.append(Edge(service.name, client.peer, client.url, kind, path, line))
    return edges, unresolved


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise GuardrailsError(f"cannot read {path} for the call-graph check: {exc}") from None


def _detail(finding: Finding, detail: str) -> Finding:
    return Finding(finding.path, finding.line, finding.rule, finding.why, detail)


def _settings_env(modules: Iterable[_Module]) -> dict[str, str]:
    """Settings field name to the environment variable it is read from (AliasChoices' first)."""
    found = {}
    for module in modules:
        for node in ast.walk(module.tree):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            for call in ast.walk(node.value) if node.value else ():
                if (
                    isinstance(call, ast.Call)
                    and _name(call.func) == "AliasChoices"
                    and call.args
                    and isinstance(call.args[0], ast.Constant)
                ):
                    found[node.target.id] = str(call.args[0].value)
    return found


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _tables(module: _Module) -> dict[str, dict[str, tuple[Any, ...]]]:
    """Module-level dicts of str to tuple, e.g. PEERS = {"a": ("pricing", "chain-b", ...)}."""
    tables = {}
    for node in module.tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(node, ast.AnnAssign):
            target = node.target
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if not (isinstance(target, ast.Name) and isinstance(value, ast.Dict)):
            continue
        rows = {}
        for key, row in zip(value.keys, value.values, strict=True):
            if isinstance(key, ast.Constant) and isinstance(row, ast.Tuple):
                rows[str(key.value)] = tuple(
                    item.value if isinstance(item, ast.Constant) else None for item in row.elts
                )
        if rows:
            tables[target.id] = rows
    return tables


def _clients(
    modules: Sequence[_Module], service: Service, settings_env: dict[str, str]
) -> tuple[list[_Client], list[Finding]]:
    clients, unresolved = [], []
    for module in modules:
        tables = _tables(module)
        for function in ast.walk(module.tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            names = _role_names(function, tables, service, settings_env) or {}
            for node in _own_nodes(function):
                if not (isinstance(node, ast.Call) and _name(node.func) in CLIENT_FACTORIES):
                    continue
                peer = _value(_argument(node, 1, "peer"), names)
                url_field = _url_field(_argument(node, 2, "base_url"), names)
                if peer is None or url_field is None:
                    finding = Finding(module.shown, node.lineno, "peers-drift", WHY["peers-drift"])
                    unresolved.append(
                        _detail(
                            finding,
                            f"{service.name}: cannot tell which peer or URL setting this client "
                            "uses (name them with literals or a role table)",
                        )
                    )
                    continue
                attributes = _kept_under(function, node, names)
                url = settings_env.get(url_field, url_field.upper())
                clients.append(_Client(peer, url, attributes, module.shown, node.lineno))
    return clients, unresolved


def _own_nodes(function: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.AST]:
    """The nodes of a function's body, without those of the functions defined inside it."""
    queue: list[ast.AST] = list(function.body)
    while queue:
        node = queue.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            queue.extend(ast.iter_child_nodes(node))


def _argument(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    for item in call.keywords:
        if item.arg == keyword:
            return item.value
    return call.args[index] if len(call.args) > index else None


def _role_names(
    function: ast.FunctionDef | ast.AsyncFunctionDef,
    tables: dict[str, dict[str, tuple[Any, ...]]],
    service: Service,
    settings_env: dict[str, str],
) -> dict[str, Any] | None:
    """Names unpacked from a role table for this service: `a, b = PEERS[settings.role]`."""
    for node in _own_nodes(function):
        if not (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Tuple)
            and isinstance(node.value, ast.Subscript)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id in tables
        ):
            continue
        key_field = _name(node.value.slice)
        variable = settings_env.get(key_field or "", "")
        row = tables[node.value.value.id].get(service.env.get(variable, ""))
        if row is None:
            return None
        return {
            target.id: value
            for target, value in zip(node.targets[0].elts, row, strict=False)
            if isinstance(target, ast.Name)
        }
    return None


def _value(node: ast.expr | None, names: dict[str, Any]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and isinstance(names.get(node.id), str):
        return str(names[node.id])
    return None


def _url_field(node: ast.expr | None, names: dict[str, Any]) -> str | None:
    """The settings field a base URL comes from: settings.x_url or getattr(settings, name)."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call) and _name(node.func) == "getattr" and len(node.args) == 2:
        return _value(node.args[1], names)
    return None


def _kept_under(
    function: ast.FunctionDef | ast.AsyncFunctionDef, call: ast.Call, names: dict[str, Any]
) -> frozenset[str]:
    """The app.state attributes a new client is stored under (none: passed on, not followed)."""
    variables, attributes = set(), set()
    own = list(_own_nodes(function))
    for node in own:
        if isinstance(node, ast.Assign) and node.value is call:
            for target in node.targets:
                if isinstance(target, ast.Attribute):
                    attributes.add(target.attr)
                elif isinstance(target, ast.Name):
                    variables.add(target.id)
    for node in own:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Name)
            and node.value.id in variables
        ):
            attributes.update(t.attr for t in node.targets if isinstance(t, ast.Attribute))
        if (
            isinstance(node, ast.Call)
            and _name(node.func) == "setattr"
            and len(node.args) == 3
            and isinstance(node.args[2], ast.Name)
            and node.args[2].id in variables
        ):
            attribute = _value(node.args[1], names)
            if attribute is not None:
                attributes.add(attribute)
    return frozenset(attributes)


@dataclass(frozen=True)
class _Function:
    name: str
    path: str
    node: ast.FunctionDef | ast.AsyncFunctionDef
    route: bool


def _functions(modules: Iterable[_Module]) -> list[_Function]:
    """Module-level functions and methods of the package (a nested def belongs to its parent)."""
    found = []
    for module in modules:
        for node in module.tree.body:
            members = node.body if isinstance(node, ast.ClassDef) else [node]
            for member in members:
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
                    found.append(_Function(member.name, module.shown, member, _is_route(member)))
    return found


def _is_route(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Decorated as a route: @router.get(...), @app.post(...)."""
    return any(
        isinstance(decorator, ast.Call)
        and isinstance(decorator.func, ast.Attribute)
        and decorator.func.attr in HTTP_VERBS
        for decorator in function.decorator_list
    )


def _reachable(functions: Sequence[_Function]) -> set[str]:
    """Names of the functions a route handler calls or hands on, transitively (by name)."""
    by_name: dict[str, list[_Function]] = {}
    for function in functions:
        by_name.setdefault(function.name, []).append(function)
    seen = {function.name for function in functions if function.route}
    queue = list(seen)
    while queue:
        for function in by_name.get(queue.pop(), []):
            for node in ast.walk(function.node):
                referred = _name(node) if isinstance(node, ast.Name | ast.Attribute) else None
                if referred in by_name and referred not in seen:
                    seen.add(referred)
                    queue.append(referred)
    return seen


def _state_aliases(modules: Iterable[_Module]) -> dict[str, str]:
    """Dependency aliases that hand a route an app.state attribute, by alias name:
    `ProfilesDep = Annotated[httpx.Client, Depends(from_state("profiles"))]` gives profiles."""
    found = {}
    for module in modules:
        for node in module.tree.body:
            if not (
                isinstance(node, ast.Assign)
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Subscript)
                and _name(node.value.value) == "Annotated"
            ):
                continue
            for call in ast.walk(node.value.slice):
                if (
                    isinstance(call, ast.Call)
                    and _name(call.func) == "from_state"
                    and call.args
                    and isinstance(call.args[0], ast.Constant)
                ):
                    found[node.targets[0].id] = str(call.args[0].value)
    return found


def _uses(
    functions: Sequence[_Function], attributes: frozenset[str], aliases: dict[str, str]
) -> Iterator[tuple[str, str, int]]:
    """(function, path, line) of each `state.<attribute>` read, close() aside, and of each
    parameter a dependency alias fills from one of the attributes (at the parameter)."""
    for function in functions:
        arguments = function.node.args
        for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
            alias = _name(argument.annotation) if argument.annotation else None
            if alias is not None and aliases.get(alias) in attributes:
                yield function.name, function.path, argument.lineno
        parents = {
            child: parent
            for parent in ast.walk(function.node)
            for child in ast.iter_child_nodes(parent)
        }
        for node in ast.walk(function.node):
            if not (
                isinstance(node, ast.Attribute)
                and node.attr in attributes
                and isinstance(node.ctx, ast.Load)
                and _name(node.value) == "state"
            ):
                continue
            parent = parents.get(node)
            if isinstance(parent, ast.Attribute) and parent.attr in NOT_A_CALL:
                continue
            yield function.name, function.path, node.lineno


def _compare(service: Service, derived: Sequence[Edge]) -> Iterator[Finding]:
    """Where the code's edges and the manifest's differ, at the code (or manifest) line."""
    declared = {(edge.peer, edge.url): edge for edge in service.edges}
    found = {(edge.peer, edge.url): edge for edge in derived}
    for key, edge in found.items():
        said = declared.get(key)
        if said is None:
            detail = (
                f"{service.name} {edge.kind} {edge.peer} (through {edge.url}), which "
                f"{MANIFEST.as_posix()} does not declare"
            )
        elif said.kind != edge.kind:
            how = "on the request path" if edge.kind == "calls" else "off the request path"
            detail = (
                f"{service.name} calls {edge.peer} {how}, but {MANIFEST.as_posix()} declares "
                f"it under `{said.kind}`"
            )
        else:
            continue
        yield Finding(edge.path, edge.line, "peers-drift", WHY["peers-drift"], detail)
    for key, edge in declared.items():
        if key not in found:
            detail = (
                f"{service.name} declares it {edge.kind} {edge.peer} (through {edge.url}), but "
                "its code makes no client for that peer"
            )
            yield Finding(edge.path, edge.line, "peers-drift", WHY["peers-drift"], detail)


def _cycles(edges: Sequence[Edge]) -> Iterator[Finding]:
    """One finding per cycle of request-path calls, named from its first service round."""
    graph: dict[str, dict[str, Edge]] = {}
    for edge in sorted(edges, key=lambda e: e.path == MANIFEST.as_posix()):
        if edge.kind == "calls":
            # Code first: a cycle is shown where the code closes it.
            graph.setdefault(edge.source, {}).setdefault(edge.peer, edge)
    reported: set[frozenset[str]] = set()
    for start in sorted(graph):
        cycle = _cycle_from(graph, start)
        if cycle is None or frozenset(cycle) in reported:
            continue
        reported.add(frozenset(cycle))
        closing = graph[cycle[-2]][cycle[-1]]
        detail = " → ".join(cycle)
        yield Finding(closing.path, closing.line, "peers-cycle", WHY["peers-cycle"], detail)


def _cycle_from(graph: dict[str, dict[str, Edge]], start: str) -> list[str] | None:
    """The first cycle through start, in name order: [start, ..., start]."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    while stack:
        node, path = stack.pop()
        for peer in sorted(graph.get(node, {}), reverse=True):
            if peer == start:
                return [*path, start]
            if peer not in path and peer > start:
                stack.append((peer, [*path, peer]))
    return None


# -- native and compose wiring -----------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    name: str
    app: str
    port: int | None
    env: dict[str, str]
    peers: dict[str, str]
    line: int


# The native lab's service table (drill.lab.model: SERVICES and GROUPS).
NATIVE_TABLE = Path("drill/lab/model.py")


def _native_specs(root: Path) -> tuple[dict[str, _Spec], dict[str, tuple[str, ...]]] | None:
    """The native lab's ServiceSpec table and GROUPS, read statically from NATIVE_TABLE."""
    path = root / NATIVE_TABLE
    if not path.is_file():
        return None
    tree = _parse(path)
    specs, groups = {}, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) == "ServiceSpec" and node.args:
            values = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            name = values[0]
            app = values[1] if len(values) > 1 else _constant(keywords.get("app"))
            port = values[2] if len(values) > 2 else _constant(keywords.get("port"))
            if not isinstance(name, str) or not isinstance(app, str) or ":" not in app:
                continue  # PROMETHEUS: not a lab service
            specs[name] = _Spec(
                name,
                app,
                port if isinstance(port, int) else None,
                _str_dict(keywords.get("env")),
                _str_dict(keywords.get("peers")),
                node.lineno,
            )
        if isinstance(node, ast.AnnAssign | ast.Assign):
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
            if isinstance(target, ast.Name) and target.id == "GROUPS":
                value = node.value
                if isinstance(value, ast.Dict):
                    for key, members in zip(value.keys, value.values, strict=True):
                        if isinstance(key, ast.Constant) and isinstance(members, ast.Tuple):
                            groups[str(key.value)] = tuple(
                                str(m.value) for m in members.elts if isinstance(m, ast.Constant)
                            )
    return specs, groups


def _constant(node: ast.expr | None) -> Any:
    return node.value if isinstance(node, ast.Constant) else None


def _str_dict(node: ast.expr | None) -> dict[str, str]:
    if not isinstance(node, ast.Dict):
        return {}
    return {
        str(key.value): str(value.value)
        for key, value in zip(node.keys, node.values, strict=True)
        if isinstance(key, ast.Constant) and isinstance(value, ast.Constant)
    }


def _check_native(root: Path, services: dict[str, Service], notes: list[str]) -> Iterator[Finding]:
    """The native lab's table wires each service to the peers the manifest names."""
    native = _native_specs(root)
    if native is None:
        notes.append(f"call graph: no {NATIVE_TABLE} in the tree; its wiring was not checked")
        return
    specs, _ = native
    shown = NATIVE_TABLE.as_posix()
    for name, service in services.items():
        spec = specs.get(name)
        if spec is None:
            detail = f"{name} is in {MANIFEST.as_posix()} but not in {shown}'s SERVICES"
            yield Finding(
                MANIFEST.as_posix(), service.line, "peers-config", WHY["peers-config"], detail
            )
            continue
        wanted = {edge.url: edge.peer for edge in service.edges}
        problems = []
        if spec.app != service.app or spec.env != service.env:
            problems.append(
                f"runs {spec.app} with {spec.env}, the manifest {service.app} with {service.env}"
            )
        if spec.peers != wanted:
            problems.append(f"wires peers {spec.peers}, the manifest {wanted}")
        for problem in problems:
            yield Finding(
                shown, spec.line, "peers-config", WHY["peers-config"], f"{name} {problem}"
            )
    for name, spec in specs.items():
        if name not in services:
            detail = f"{name} is not in {MANIFEST.as_posix()}"
            yield Finding(shown, spec.line, "peers-config", WHY["peers-config"], detail)


def _check_compose(root: Path, services: dict[str, Service], notes: list[str]) -> Iterator[Finding]:
    """Each compose container's peer URLs point at the service the manifest names."""
    path = root / "compose.yaml"
    native = _native_specs(root)
    if not path.is_file() or native is None:
        notes.append("call graph: no compose.yaml in the tree; its wiring was not checked")
        return
    specs, groups = native
    text = path.read_text()
    try:
        document = yaml.safe_load(text)
        nodes = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise GuardrailsError(f"compose.yaml: not valid YAML: {exc}") from None
    containers = (document or {}).get("services") or {}
    hosted: dict[str, str] = {}  # lab service -> compose service running it
    for container, spec in containers.items():
        command = spec.get("command") if isinstance(spec, dict) else None
        if isinstance(command, list) and command[:2] == ["drill", "serve"] and len(command) > 2:
            for name in groups.get(str(command[2]), (str(command[2]),)):
                hosted[name] = container
    ports = {name: spec.port for name, spec in specs.items()}
    for name, service in services.items():
        container = hosted.get(name)
        if container is None:
            detail = f"no compose service runs {name} (`drill serve {name}`)"
            yield Finding("compose.yaml", 1, "peers-config", WHY["peers-config"], detail)
            continue
        environment = containers[container].get("environment") or {}
        if isinstance(environment, list):  # the `- KEY=value` form
            environment = dict(str(item).partition("=")[::2] for item in environment)
        for edge in service.edges:
            line = _compose_line(nodes, container, edge.url)
            url = environment.get(edge.url)
            if url is None:
                detail = f"{container} does not set {edge.url}, {name}'s URL of {edge.peer}"
                yield Finding("compose.yaml", line, "peers-config", WHY["peers-config"], detail)
                continue
            parts = urlsplit(str(url))
            if parts.hostname in ("127.0.0.1", "localhost"):
                reached = {
                    n for n, c in hosted.items() if c == container and ports.get(n) == parts.port
                }
            else:
                reached = {
                    n
                    for n, c in hosted.items()
                    if c == parts.hostname and ports.get(n) == parts.port
                }
            if reached != {edge.peer}:
                detail = f"{container} sets {edge.url}={url}, which is not {edge.peer}'s address"
                yield Finding("compose.yaml", line, "peers-config", WHY["peers-config"], detail)


def _compose_line(document: yaml.Node | None, container: str, variable: str) -> int:
    """The line of services.<container>.environment.<variable> (else the container's)."""
    line = 1
    node = document
    for key in ("services", container, "environment", variable):
        if not isinstance(node, yaml.MappingNode):
            return line
        for key_node, value in node.value:
            if key_node.value == key:
                line, node = key_node.start_mark.line + 1, value
                break
        else:
            return line
    return line
