"""The participant kit: what it leaves out, rewrites and adds, that it gives no cause away, and
that a lab runs from it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drill import pack
from drill.agenda import format_clock
from drill.cli import app
from drill.native import SERVICES
from drill.scenarios import load_program
from faults import load_catalog
from tests.conftest import REPO_ROOT
from tests.labs import drop_database, fresh_database, lab_env, run_drill, verify

runner = CliRunner()
PROGRAM = load_program(REPO_ROOT / "scenarios.yaml")
CATALOG = load_catalog()
# Git as the tests run it: no user config, no signing, the same identity everywhere.
GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=root, env=GIT_ENV, capture_output=True, text=True, check=True
    )
    return done.stdout


def tracked(root: Path) -> list[str]:
    return [path for path in git(root, "ls-files", "-z").split("\0") if path]


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kit as a git repository, built from this tree's files as they are."""
    out = tmp_path_factory.mktemp("pack") / "kit"
    pack.build(REPO_ROOT, out, allow_dirty=True)
    return out


def kit_texts(kit: Path) -> Iterator[tuple[str, str]]:
    for path in tracked(kit):
        try:
            yield path, (kit / path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh clone of this tree's last commit: a clean checkout to pack or to dirty."""
    target = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(REPO_ROOT), str(target))
    return target


def invoke_pack(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["pack", "participants", *args], env={"COLUMNS": "250"})
    return result.exit_code, result.output


# -- the kit as built -----------------------------------------------------------------------------


def test_the_kit_is_a_repository_with_exactly_one_commit(kit: Path) -> None:
    """The kit is a git repository whose one commit holds every file in it, and no more."""
    assert git(kit, "rev-list", "--count", "HEAD").strip() == "1"
    assert git(kit, "status", "--porcelain", "--untracked-files=all") == ""
    on_disk = {
        str(path.relative_to(kit))
        for path in kit.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(kit).parts
    }
    assert on_disk == set(tracked(kit))
    assert os.access(kit / "scripts" / "test", os.X_OK), "executable bits survive"


def test_the_kit_leaves_out_every_excluded_path(kit: Path) -> None:
    """No tracked path that EXCLUDED names is in the kit; everything else tracked is."""
    source = set(tracked(REPO_ROOT))
    in_kit = set(tracked(kit))
    left_out = {path for path in source if pack.excluded(path)}
    assert not left_out & in_kit
    assert source - left_out - {pack.KIT_README} <= in_kit
    for path in in_kit:
        assert not path.startswith(("solutions/", "tests/shortcuts/", "benchmarks/")), path
        assert not re.fullmatch(r"tests/test_drill_.*\.py", path), path
    assert "docs/instructor-guide.md" not in in_kit
    assert "drill/pack.py" not in in_kit and "tests/test_pack.py" not in in_kit


def test_every_exclusion_still_matches_a_tracked_file() -> None:
    """Each EXCLUDED entry leaves something out: a stale entry hides a renamed file's leak."""
    source = tracked(REPO_ROOT)
    for pattern in pack.EXCLUDED:
        assert any(pack.excluded(path) == pack.EXCLUDED[pattern] for path in source), pattern


def test_no_test_left_in_the_kit_applies_a_solution(kit: Path) -> None:
    """The kit's tests neither apply a reference fix or shortcut nor read solutions/."""
    applies = re.compile(r"solution\s*=|import[^\n]*\bapply\b|shortcuts|solutions/")
    for path, text in kit_texts(kit):
        if path.startswith("tests/"):
            assert not applies.search(text), path


def test_the_kit_adds_the_participant_documents(kit: Path) -> None:
    """The handout, the dashboards guide, a card per scenario and the participants' README."""
    docs = kit / "docs" / "participants"
    assert (docs / "handout.md").read_text() == (
        REPO_ROOT / pack.PARTICIPANT_DOCS / "handout.md"
    ).read_text()
    assert (docs / "dashboards.md").is_file()
    assert (kit / "README.md").read_text() == (REPO_ROOT / pack.KIT_README).read_text()
    assert not (kit / pack.KIT_README).exists()
    for name, scenario in PROGRAM.scenarios.items():
        card = (kit / pack.CARD.format(name=name)).read_text()
        assert card.startswith(f"# {scenario.title}\n")
        assert " ".join(scenario.summary.split()) in " ".join(card.split())
        for service in scenario.services:
            assert service in card
        assert f"drill verify {name}" in card and f"drill verify {name} --baseline" in card
        for check in scenario.sla:
            assert check.name in card


def test_the_kit_catalog_has_participant_descriptions_only(kit: Path) -> None:
    """In the kit each flag's description is its participant description, and nothing more."""
    document = json.loads((kit / "faults" / "flags.json").read_text())
    assert set(document["flags"]) == set(CATALOG.flags)
    for key, flag in document["flags"].items():
        assert flag["metadata"]["description"] == CATALOG[key].participant_description, key
        assert "participant_description" not in flag["metadata"], key
        assert flag["variants"] == CATALOG[key].variants
    kit_catalog = load_catalog(kit / "faults" / "flags.json")
    assert all(spec.participant_description is None for spec in kit_catalog.flags.values())


def test_every_flag_has_a_participant_description_without_spoilers() -> None:
    """The catalog gives every flag a participant description, and none names a cause."""
    for key, spec in CATALOG.flags.items():
        assert spec.participant_description, key
        assert spec.participant_description != spec.description or spec.kind == "control", key
        found = pack.spoilers("faults/flags.json", spec.participant_description, PROGRAM.scenarios)
        assert found == [], found


def test_no_file_in_the_kit_names_a_cause(kit: Path) -> None:
    """No kit file has a spoiler term in its prose (the rule: pack.spoilers)."""
    found = [
        f for path, text in kit_texts(kit) for f in pack.spoilers(path, text, PROGRAM.scenarios)
    ]
    assert found == [], "\n".join(map(str, found))


def test_no_file_in_the_kit_holds_a_line_a_reference_fix_adds(kit: Path) -> None:
    """No kit file has a significant line a solution patch adds (pack.solution_lines)."""
    lines = pack.solution_lines(REPO_ROOT)
    # The rule has teeth: the fixes' own lines count, shared boilerplate does not.
    assert "class Balance(Base):" in lines
    assert not {"try:", "return None", ")", "import asyncio", "session.commit()"} & lines
    found = [f for path, text in kit_texts(kit) for f in pack.leaked_lines(path, text, lines)]
    assert found == [], "\n".join(map(str, found))


def test_the_spoiler_rule_allows_identifiers_and_catches_prose() -> None:
    """Scenario names and identifiers pass; the same words in prose, comments or docstrings do
    not; code and JSON keys are not prose."""
    names = PROGRAM.scenarios

    def terms(path: str, text: str) -> list[str]:
        return [f.what.split("'")[1] for f in pack.spoilers(path, text, names)]

    assert (
        terms("a.md", "Run `drill verify circular-deadlock` and read scenario-n-plus-one.md.") == []
    )
    prose = "A circular deadlock, then an N+1 and floating-point money."
    assert sorted(terms("a.md", prose)) == ["N+1", "circular", "deadlock", "floating-point"]
    assert terms("a.md", "Send an Idempotency-Key; the idempotency key is stored.") == []
    assert terms("a.md", "Make POST idempotent.") == ["idempotent"]
    assert terms("a.md", "The API takes a batch of ids; max_batch caps it.") == []
    assert terms("a.md", "Batched calls fix it.") == ["Batched"]
    assert terms("a.md", "a plain decimal string") == [] and terms("a.md", "use Decimal") == [
        "Decimal"
    ]
    code = 'def f(x: float) -> float:\n    """Scale x."""\n    return float(x)  # a float\n'
    assert terms("a.py", code) == ["float"]
    assert terms("a.py", 'def f() -> None:\n    """Breaks the cycle."""\n') == ["cycle"]
    assert terms("a.json", '{"decimals": 1, "title": "Breaker state"}') == ["Breaker"]
    assert terms("a.yaml", "# the shipped chain deadlocks\nkey: value\n") == ["deadlocks"]


def test_the_kit_scenarios_keep_every_check_and_hide_hints_and_bases(kit: Path) -> None:
    """The kit's scenarios.yaml loads with the kit's catalog and judges exactly as the lab's;
    its hints are placeholders and its latency bases describe no fix."""
    program = load_program(kit / "scenarios.yaml", load_catalog(kit / "faults" / "flags.json"))
    assert program.agenda == PROGRAM.agenda and program.rotation == PROGRAM.rotation
    for name, ours in PROGRAM.scenarios.items():
        theirs = program.scenario(name)
        assert (theirs.triggers, theirs.load, theirs.summary) == (
            ours.triggers,
            ours.load,
            ours.summary,
        )
        assert [c.model_copy(update={"basis": None}) for c in theirs.sla] == [
            c.model_copy(update={"basis": None}) for c in ours.sla
        ]
        assert len(theirs.hints) == len(ours.hints)
        assert not set(theirs.hints) & set(ours.hints)
        for check, original in zip(theirs.sla, ours.sla, strict=True):
            assert (check.basis is None) == (original.basis is None)
            assert check.basis != original.basis or check.basis is None
    text = (kit / "scenarios.yaml").read_text()
    assert "basis: >" in text and '- at: "0:10"' in text, "edited in place, not re-dumped"


def test_the_kit_dashboards_leave_out_only_the_fix_only_panels(kit: Path) -> None:
    """No kit dashboard reads a metric only a fix exports; every other panel is still there."""
    from tests.test_dashboards import FIX_ONLY_METRICS

    assert set(pack.FIX_ONLY_METRICS) == set(FIX_ONLY_METRICS)
    for source in sorted((REPO_ROOT / "grafana" / "dashboards").glob("*.json")):
        theirs = json.loads((kit / "grafana" / "dashboards" / source.name).read_text())
        ours = json.loads(source.read_text())
        assert not any(metric in json.dumps(theirs) for metric in FIX_ONLY_METRICS), source.name
        kept = {p["title"] for p in theirs["panels"] if p["type"] != "row"}
        reading = {
            p["title"]
            for p in ours["panels"]
            if p["type"] != "row" and not any(m in json.dumps(p) for m in FIX_ONLY_METRICS)
        }
        assert kept == reading, source.name


def test_the_handout_has_the_agenda_the_ports_and_the_verdicts() -> None:
    """handout.md follows scenarios.yaml's agenda, lists the lab's ports, and says how verify
    judges and exits."""
    handout = (REPO_ROOT / pack.PARTICIPANT_DOCS / "handout.md").read_text()
    for entry in PROGRAM.agenda:
        row = f"| {format_clock(entry.start)}-{format_clock(entry.end)} | {entry.name} |"
        assert row in handout, row
    for port in {spec.port for spec in SERVICES.values()} | {9090, 3000, 16686, 8089}:
        assert str(port) in handout, port
    for words in ("DRILL_PORT_OFFSET", ".drill/logs", "no AI assistant", "Invariants",
                  "Latency bounds", "**0**", "**1**", "**2**"):  # fmt: skip
        assert words in handout, words


def test_the_dashboards_guide_names_real_panels(kit: Path) -> None:
    """Every quoted name in dashboards.md is a panel or dashboard title in the kit's Grafana."""
    titles = {"3 A.M. Drill"}
    for path in (kit / "grafana" / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        titles.add(dashboard["title"])
        titles |= {panel["title"] for panel in dashboard["panels"]}
    guide = (kit / "docs" / "participants" / "dashboards.md").read_text()
    named = re.findall(r'"([^"\n]+)"', " ".join(guide.split()))
    assert len(named) > 20
    assert not set(named) - titles


# -- the command ---------------------------------------------------------------------------------


def test_the_tar_kit_holds_the_same_one_commit_repository(kit: Path, tmp_path: Path) -> None:
    """`drill pack participants NAME.tar.gz` writes the same repository under NAME/."""
    archive = tmp_path / "team-kit.tar.gz"
    code, output = invoke_pack(str(archive), "--allow-dirty", "--root", str(REPO_ROOT))
    assert code == 0, output
    assert "tar" in output and str(archive) in output
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert all(name == "team-kit" or name.startswith("team-kit/") for name in names)
        tar.extractall(tmp_path / "x", filter="data")
    unpacked = tmp_path / "x" / "team-kit"
    assert git(unpacked, "rev-list", "--count", "HEAD").strip() == "1"
    assert tracked(unpacked) == tracked(kit)
    assert git(unpacked, "rev-parse", "HEAD^{tree}") == git(kit, "rev-parse", "HEAD^{tree}")


@pytest.mark.parametrize(
    ("out", "extra", "message"),
    [
        ("kit", ["--format", "zip"], "unknown format 'zip': choose one of git, tar"),
        ("kit", ["--format", "tar"], "--format tar writes a .tar.gz archive"),
        ("kit.tar.gz", ["--format", "git"], "--format git writes a directory"),
        ("full", [], "exists and is not an empty directory"),
        ("full.tar.gz", [], "exists: remove it or choose another OUT"),
    ],
)
def test_bad_output_is_refused_with_exit_2_and_nothing_written(
    tmp_path: Path, out: str, extra: list[str], message: str
) -> None:
    """A bad format or an OUT that holds something is a clear error (exit 2) that writes nothing."""
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "full.tar.gz").write_bytes(b"mine")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, output = invoke_pack(
        str(tmp_path / out), *extra, "--allow-dirty", "--root", str(REPO_ROOT)
    )
    assert code == 2, output
    assert message in output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_an_empty_directory_is_filled(tmp_path: Path, clone: Path) -> None:
    """An existing empty OUT is fine: the kit goes into it (a clean checkout, no --allow-dirty)."""
    out = tmp_path / "empty"
    out.mkdir()
    code, output = invoke_pack(str(out), "--root", str(clone))
    assert code == 0, output
    assert git(out, "rev-list", "--count", "HEAD").strip() == "1"


def test_a_tree_that_is_not_a_git_checkout_is_refused(tmp_path: Path, clone: Path) -> None:
    """Without git there is no list of tracked files: exit 2, and the error says so."""
    shutil.rmtree(clone / ".git")
    code, output = invoke_pack(str(tmp_path / "kit"), "--root", str(clone))
    assert code == 2, output
    assert "is not a git checkout" in output
    assert not (tmp_path / "kit").exists()


def test_uncommitted_changes_are_refused_unless_allowed(tmp_path: Path, clone: Path) -> None:
    """A changed tracked file stops the pack, named in the error; --allow-dirty packs it as is."""
    readme = clone / pack.KIT_README
    readme.write_text(readme.read_text() + "\nChanged after the last commit.\n")
    code, output = invoke_pack(str(tmp_path / "kit"), "--root", str(clone))
    assert code == 2, output
    assert "uncommitted changes" in output and pack.KIT_README in output
    assert not (tmp_path / "kit").exists()
    code, output = invoke_pack(str(tmp_path / "kit"), "--allow-dirty", "--root", str(clone))
    assert code == 0, output
    assert "Changed after the last commit." in (tmp_path / "kit" / "README.md").read_text()


def test_a_kit_that_would_give_a_cause_away_is_not_written(tmp_path: Path, clone: Path) -> None:
    """A committed participant document that names a cause stops the pack at its line."""
    handout = clone / pack.PARTICIPANT_DOCS / "handout.md"
    handout.write_text(handout.read_text() + "\nHint: it is a deadlock.\n")
    git(clone, "commit", "-q", "-a", "-m", "a careless edit")
    code, output = invoke_pack(str(tmp_path / "kit"), "--root", str(clone))
    assert code == 2, output
    assert f"{pack.PARTICIPANT_DOCS}/handout.md:" in output and "'deadlock'" in output
    assert sorted(tmp_path.iterdir()) == [clone]


def test_the_kit_cannot_pack_itself(kit: Path) -> None:
    """Inside a kit `drill pack participants` explains that packing is the instructors' job."""
    done = subprocess.run(
        [sys.executable, "-m", "drill.cli", "pack", "participants", "again"],
        cwd=kit, env={**os.environ, "PYTHONPATH": str(kit), "PYTHONDONTWRITEBYTECODE": "1",
                      "COLUMNS": "250"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "this tree is a participant kit" in done.stderr
    assert not (kit / "again").exists()


# -- phase 4's handout ---------------------------------------------------------------------------


def test_what_phase4_hands_out_is_left_out_of_the_kit() -> None:
    """Each phase 4 path is kept out of the kit until then, and the kit loses nothing else."""
    for entry in pack.PHASE4:
        assert pack.excluded(entry if not entry.endswith("/") else entry + "x") is not None, entry


def guardrails_in(tree: Path, *paths: str) -> subprocess.CompletedProcess[str]:
    """`drill guardrails` run by the tree's own code, with this lab's semgrep and ruff."""
    from drill import guardrails

    semgrep = guardrails.find_tool("semgrep", REPO_ROOT)
    if semgrep is None:
        message = f"semgrep is not installed; {guardrails.SEMGREP_MISSING}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run(
        [sys.executable, "-m", "drill.cli", "guardrails", *paths],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1",
                       "DRILL_SEMGREP": semgrep, "COLUMNS": "250"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_phase4_handout_brings_the_guardrails_to_a_kit(kit: Path, tmp_path: Path) -> None:
    """Before phase 4 the kit's `drill guardrails` says the rules come then (exit 2); after
    `tar -xzf` of `drill pack phase4` it finds the chain's cycle (exit 1)."""
    team = tmp_path / "team"
    shutil.copytree(kit, team)
    before = guardrails_in(team, "services/chain")
    assert before.returncode == 2, before.stderr
    assert "the guardrails arrive in phase 4" in before.stderr

    archive = tmp_path / "phase4.tar.gz"
    result = runner.invoke(
        app, ["pack", "phase4", str(archive), "--allow-dirty", "--root", str(REPO_ROOT)],
        env={"COLUMNS": "250"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"tar -xzf {archive.name} -C" in result.output
    wanted = [
        path for path in tracked(REPO_ROOT)
        if any(path == e or (e.endswith("/") and path.startswith(e)) for e in pack.PHASE4)
    ]  # fmt: skip
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == sorted(wanted)
        tar.extractall(team, filter="data")

    after = guardrails_in(team, "services/chain")
    assert after.returncode == 1, after.stderr + after.stdout
    assert "peers-cycle" in after.stdout and "chain-a → chain-b → chain-c → chain-a" in after.stdout


@pytest.mark.parametrize(
    ("out", "message"),
    [("phase4.zip", "name OUT like phase4.tar.gz"), ("full.tar.gz", "exists: remove it")],
)
def test_a_bad_phase4_output_is_refused_and_nothing_written(
    tmp_path: Path, out: str, message: str
) -> None:
    (tmp_path / "full.tar.gz").write_bytes(b"mine")
    result = runner.invoke(
        app, ["pack", "phase4", str(tmp_path / out), "--allow-dirty", "--root", str(REPO_ROOT)],
        env={"COLUMNS": "250"},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.tar.gz"]


# -- the kit runs ---------------------------------------------------------------------------------


@pytest.mark.lab
def test_a_lab_runs_from_the_kit_and_verify_judges(tmp_path: Path, postgres_url: str) -> None:
    """`drill up --native` in the kit starts every service on its own ports and database, and
    `drill verify fp-drift --baseline` runs to a verdict there (exit 0 or 1, never 2)."""
    root = pack.build(REPO_ROOT, tmp_path / "kit", allow_dirty=True).path
    database = f"{postgres_url.rsplit('/', 1)[1]}_kit"
    env = lab_env(root, database_url=fresh_database(database))
    env["PYTHONPATH"] = str(root)  # the kit's code, not this tree's
    try:
        up = run_drill(root, env, "up", "--native")
        assert up.returncode == 0, up.stderr + up.stdout
        code, result = verify(root, env, "fp-drift", "--baseline", "--duration", "10")
        assert code in (0, 1) and result["scenario"] == "fp-drift" and result["baseline"]
    finally:
        down = run_drill(root, env, "down")
        drop_database(database)
    assert down.returncode == 0, down.stderr + down.stdout
