"""drill guardrails: the review checks find each shipped defect on its line, and only there."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drill import guardrails, solutions
from drill.cli import app
from tests.conftest import REPO_ROOT

runner = CliRunner()
CASES = REPO_ROOT / "tests" / "guardrails_cases"
FINDING = re.compile(r"^(?P<path>\S+):(?P<line>\d+) (?P<rule>\S+) (?P<text>.+)$")

# Each drill's defects as (file, a snippet of the defect's line, rule). The snippet finds the
# line, so the test pins the exact file:line without hard-coding numbers that move.
DEFECTS: dict[str, list[tuple[str, str, str]]] = {
    "fp-drift": [
        (
            "services/ledger/models.py",
            "amount: Mapped[float] = mapped_column(Float)",
            "money-float-column",
        ),
        (
            "services/ledger/models.py",
            "balance_after: Mapped[float] = mapped_column(Float)",
            "money-float-column",
        ),
        ("services/ledger/api.py", "amount = float(body.amount)", "money-float-arithmetic"),
        ("services/ledger/api.py", "amount = amount * float(fx_rate)", "money-float-arithmetic"),
    ],
    "circular-deadlock": [
        ("services/chain/app.py", "timeout=None,", "http-no-timeout"),
        # chain-c's customer check, on the request path: the edge that closes the cycle, and
        # the one the manifest declares off it (notifies).
        ("services/chain/api.py", "response = state.orders.get(", "peers-cycle"),
        ("services/chain/api.py", "response = state.orders.get(", "peers-drift"),
    ],
    "n-plus-one": [
        ("services/feed/api.py", "user = session.get(User, user_id)", "sync-db-in-async"),
        ("services/feed/api.py", "followees = session.scalars(", "sync-db-in-async"),
        ("services/feed/api.py", "session.scalars(", "sync-db-in-async"),
        ("services/feed/api.py", "author = session.scalars(", "sync-db-in-async"),
        ("services/feed/api.py", "response = profiles.get(", "blocking-io-in-async"),
        # One query per followee (reported at the query it builds), one per post's author.
        ("services/feed/api.py", "select(Post)", "query-in-loop"),
        ("services/feed/api.py", "author = session.scalars(", "query-in-loop"),
    ],
}


def _line(path: str, snippet: str) -> int:
    lines = (REPO_ROOT / path).read_text().splitlines()
    found = [number for number, text in enumerate(lines, 1) if text.strip().startswith(snippet)]
    assert len(found) == 1, f"{path}: {snippet!r} is on lines {found}, expected exactly one"
    return found[0]


def _expected(*drills: str) -> set[tuple[str, int, str]]:
    return {
        (path, _line(path, snippet), rule)
        for drill in drills
        for path, snippet, rule in DEFECTS[drill]
    }


def _keys(findings: list[guardrails.Finding]) -> set[tuple[str, int, str]]:
    return {(finding.path, finding.line, finding.rule) for finding in findings}


@pytest.fixture(scope="module")
def semgrep_installed() -> None:
    """semgrep comes from its own venv (scripts/bootstrap guardrails); CI must have it."""
    if guardrails.find_tool("semgrep", REPO_ROOT) is None:
        message = f"semgrep is not installed; {guardrails.SEMGREP_MISSING}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def shipped(semgrep_installed: None) -> dict[str, object]:
    """`drill guardrails` on the repository as shipped, once for the module."""
    result = runner.invoke(app, ["guardrails", "--root", str(REPO_ROOT)], env={"COLUMNS": "400"})
    findings = [FINDING.match(line) for line in result.stdout.splitlines()]
    assert all(findings), result.stdout
    return {
        "exit_code": result.exit_code,
        "output": result.output,
        "keys": {(m["path"], int(m["line"]), m["rule"]) for m in findings if m},
        "lines": [m.groupdict() for m in findings if m],
    }


@pytest.fixture(scope="module", params=sorted(DEFECTS))
def patched(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    semgrep_installed: None,
) -> Iterator[tuple[str, guardrails.Report]]:
    """guardrails on a copy of the lab with one reference fix applied."""
    name = request.param
    tree = solutions.copy_lab(REPO_ROOT, tmp_path_factory.mktemp(name) / "lab", solution=name)
    yield name, guardrails.run(tree)


def test_shipped_code_exits_1_with_file_line_rule_and_why(shipped: dict[str, object]) -> None:
    """Findings make the command exit 1, each line `file:line rule why`, with a 3 a.m. reason."""
    assert shipped["exit_code"] == 1, shipped["output"]
    lines = shipped["lines"]
    assert isinstance(lines, list)
    for line in lines:
        assert line["text"].rstrip().endswith("."), line
        assert len(line["text"]) > 60, line


@pytest.mark.parametrize("drill", sorted(DEFECTS))
def test_each_known_defect_is_found_on_its_line(shipped: dict[str, object], drill: str) -> None:
    """The ledger's float money, the chain's timeout=None and cycle, the feed's blocking N+1."""
    keys = shipped["keys"]
    assert isinstance(keys, set)
    missing = _expected(drill) - keys
    assert not missing, f"not reported: {sorted(missing)}\n{shipped['output']}"


def test_the_chain_cycle_is_named(shipped: dict[str, object]) -> None:
    """The cycle finding names its services in call order, from chain-a back to chain-a."""
    lines = shipped["lines"]
    assert isinstance(lines, list)
    cycles = [line["text"] for line in lines if line["rule"] == "peers-cycle"]
    assert len(cycles) == 1
    assert cycles[0].startswith("chain-a → chain-b → chain-c → chain-a: ")


def test_nothing_else_in_the_code_base_trips_a_rule(shipped: dict[str, object]) -> None:
    """services/, drill/ and faults/ have no finding beyond the known defect lines."""
    keys = shipped["keys"]
    assert isinstance(keys, set)
    extra = keys - _expected(*DEFECTS)
    assert not extra, f"unexpected findings: {sorted(extra)}"


def test_each_reference_fix_clears_its_drill(patched: tuple[str, guardrails.Report]) -> None:
    """With one solution applied, that drill's findings are gone and nothing new appears."""
    name, report = patched
    others = [drill for drill in DEFECTS if drill != name]
    assert _keys(report.findings) == _expected(*others)


def test_every_fix_applied_leaves_a_clean_tree(tmp_path: Path, semgrep_installed: None) -> None:
    """All three reference fixes together: no finding, exit 0 (the pre-commit hook passes)."""
    tree = solutions.copy_lab(
        REPO_ROOT,
        tmp_path / "lab",
        solution="fp-drift",
        patches=[
            REPO_ROOT / "solutions" / f"{name}.patch"
            for name in ("circular-deadlock", "n-plus-one")
        ],
    )
    result = runner.invoke(app, ["guardrails", "--root", str(tree)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "no findings" in result.stderr


def test_paths_limit_the_report_to_their_findings(semgrep_installed: None) -> None:
    """Given one file, only its findings show: the chain's cycle is counted in a note instead."""
    result = runner.invoke(
        app, ["guardrails", str(REPO_ROOT / "services/feed/api.py"), "--root", str(REPO_ROOT)]
    )
    assert result.exit_code == 1, result.output
    found = {m["path"] for m in map(FINDING.match, result.stdout.splitlines()) if m}
    assert found == {"services/feed/api.py"}
    assert "call graph: 2 finding(s) outside the paths given" in result.stderr


def test_rule_cases_match_their_annotations(semgrep_installed: None) -> None:
    """Each `# ruleid:` case line is reported under that rule, and no `# ok:` line is."""
    files = sorted(CASES.glob("*.py"))
    expected: set[tuple[str, int, str]] = set()
    for path in files:
        lines = path.read_text().splitlines()
        for number, text in enumerate(lines, 1):
            match = re.match(r"\s*# ruleid: (.+)$", text)
            if match:
                target = next(
                    n
                    for n in range(number + 1, len(lines) + 1)
                    if not lines[n - 1].lstrip().startswith("#")
                )
                shown = path.relative_to(REPO_ROOT).as_posix()
                expected.update((shown, target, rule.strip()) for rule in match[1].split(","))
    found = _keys(
        guardrails.semgrep(REPO_ROOT, [p.relative_to(REPO_ROOT).as_posix() for p in files])
    )
    assert found == expected, (
        f"missed: {sorted(expected - found)}\nunexpected: {sorted(found - expected)}"
    )


def test_ruff_findings_join_the_report_with_their_rule_and_why() -> None:
    """ruff's ASYNC and S113 findings come back as `ruff:CODE`, with the same kind of why."""
    cases = ["tests/guardrails_cases/async_blocking.py", "tests/guardrails_cases/http_timeout.py"]
    findings = guardrails.ruff(REPO_ROOT, cases)
    sleeps = [f for f in findings if f.rule == "ruff:ASYNC251"]
    # Only the sleep in the async route: not the one in its worker-thread helper, nor the sync one.
    first = (REPO_ROOT / cases[0]).read_text().splitlines().index("    time.sleep(0.1)") + 1
    assert [(f.path, f.line) for f in sleeps] == [(cases[0], first)]
    assert sleeps[0].why == guardrails.BLOCKING_WHY
    s113 = [f for f in findings if f.rule == "ruff:S113"]
    assert s113 and all(f.path == cases[1] and f.why == guardrails.HTTP_WHY for f in s113)


def test_a_path_that_does_not_exist_exits_2(tmp_path: Path) -> None:
    """A bad path is refused with exit 2 and says which path."""
    missing = tmp_path / "no-such-dir"
    result = runner.invoke(app, ["guardrails", str(missing), "--root", str(REPO_ROOT)])
    assert result.exit_code == 2
    assert f"no such file or directory: {missing}" in result.stderr


def test_without_semgrep_it_exits_2_and_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No semgrep: exit 2 (could not run), with the command that installs it."""
    real = guardrails.find_tool
    monkeypatch.setattr(
        guardrails, "find_tool", lambda name, root: None if name == "semgrep" else real(name, root)
    )
    result = runner.invoke(app, ["guardrails", "--root", str(REPO_ROOT)])
    assert result.exit_code == 2
    assert "semgrep is not installed" in result.stderr
    assert "scripts/bootstrap guardrails" in result.stderr


def test_a_manifest_that_disagrees_with_the_wiring_is_reported(tmp_path: Path) -> None:
    """An edge the code and the native lab do not have is a finding at the manifest's line."""
    tree = solutions.copy_lab(REPO_ROOT, tmp_path / "lab", solution="circular-deadlock")
    manifest = tree / guardrails.MANIFEST
    text = manifest.read_text()
    manifest.write_text(
        text.replace(
            "    app: services.ledger.app:create_app\n",
            "    app: services.ledger.app:create_app\n"
            "    calls:\n      - {peer: profiles, url: PROFILES_URL}\n",
        )
    )
    line = (
        manifest.read_text().splitlines().index("      - {peer: profiles, url: PROFILES_URL}") + 1
    )
    findings = guardrails.call_graph(tree)
    rules = {(f.path, f.rule) for f in findings}
    assert ("guardrails/peers.yaml", "peers-drift") in rules
    assert any(f.line == line and "ledger" in f.detail for f in findings)
    assert ("drill/lab/model.py", "peers-config") in rules


def test_a_malformed_manifest_cannot_run(tmp_path: Path) -> None:
    """A manifest naming an unknown peer: exit 2, with its file:line and what is wrong."""
    tree = solutions.copy_lab(REPO_ROOT, tmp_path / "lab")
    manifest = tree / guardrails.MANIFEST
    manifest.write_text(manifest.read_text().replace("peer: chain-b", "peer: chain-z"))
    result = runner.invoke(app, ["guardrails", "--root", str(tree)])
    assert result.exit_code == 2
    assert re.search(r"guardrails/peers\.yaml:\d+: .*'chain-z' is not a service", result.stderr)


def test_compose_wiring_a_peer_url_elsewhere_is_reported(tmp_path: Path) -> None:
    """A compose peer URL that reaches another service than the manifest names is a finding."""
    tree = solutions.copy_lab(REPO_ROOT, tmp_path / "lab", solution="circular-deadlock")
    compose = (REPO_ROOT / "compose.yaml").read_text()
    wrong = "CHAIN_STOCK_URL: http://127.0.0.1:8011"
    (tree / "compose.yaml").write_text(
        compose.replace("CHAIN_STOCK_URL: http://127.0.0.1:8013", wrong)
    )
    line = (tree / "compose.yaml").read_text().splitlines().index(f"      {wrong}") + 1
    findings = [f for f in guardrails.call_graph(tree) if f.rule == "peers-config"]
    assert [(f.path, f.line) for f in findings] == [("compose.yaml", line)]
    assert "chain-c" in findings[0].detail


def test_a_client_a_route_takes_as_a_dependency_is_on_the_request_path() -> None:
    """The feed's route takes the profiles client through a `from_state` alias: the check follows
    the alias to the route's parameter, not only `state.<attribute>` reads."""
    services = guardrails.load_manifest(REPO_ROOT)
    edges, unresolved = guardrails.derive_edges(REPO_ROOT, services["feed"])
    assert unresolved == []
    line = _line("services/feed/api.py", "profiles: ProfilesDep,")
    assert [(e.peer, e.kind, e.path, e.line) for e in edges] == [
        ("profiles", "calls", "services/feed/api.py", line)
    ]
