"""Installs are locked: every install path syncs uv.lock, and what the code imports is declared."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
FIRST_PARTY = {"drill", "services", "faults", "loadtests", "tests"}
# Which requirements the code under each directory may import: the services and the CLI only
# what every install has; the debrief report its own extra; the load tests Locust.
ALLOWED_EXTRAS = {
    "services": (),
    "faults": (),
    "drill": (),
    "drill/report": ("report",),
    "loadtests": ("load",),
}


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503)."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def declared(extras: tuple[str, ...]) -> set[str]:
    names = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    for extra in extras:
        names |= {_name(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]}
    return names


def third_party_imports(path: Path) -> set[str]:
    """Top-level module names a file imports that are neither stdlib nor the lab's own."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    local = {p.stem for p in path.parent.glob("*.py")} | {
        p.name for p in path.parent.iterdir() if p.is_dir()
    }
    return {m for m in found - FIRST_PARTY - local if m not in sys.stdlib_module_names}


def test_every_import_is_a_declared_requirement() -> None:
    """A module the code imports comes from a requirement pyproject.toml declares for it (anyio
    came in with FastAPI, undeclared, until it was named), not from another one's dependencies."""
    distributions = packages_distributions()
    missing = []
    for directory, extras in ALLOWED_EXTRAS.items():
        allowed = declared(extras)
        deeper = [d for d in ALLOWED_EXTRAS if d.startswith(directory + "/")]
        for path in sorted((REPO_ROOT / directory).rglob("*.py")):
            relative = path.relative_to(REPO_ROOT).as_posix()
            if any(relative.startswith(d + "/") for d in deeper):
                continue
            for module in sorted(third_party_imports(path)):
                providers = {_name(d) for d in distributions.get(module, [])}
                assert providers, f"{relative}: {module} is not installed"
                if not providers & allowed:
                    missing.append(f"{relative}: {module} (from {', '.join(sorted(providers))})")
    assert not missing, "imported but not declared for that code:\n" + "\n".join(missing)


def test_the_service_requirements_leave_out_locust_and_the_fixes_libraries() -> None:
    """The services' dependencies are what they run on; Locust and a fix's libraries are extras."""
    base = declared(())
    assert "locust" not in base and "matplotlib" not in base
    assert {"purgatory", "stamina", "redis"} <= declared(("fixes",)) - base
    assert "locust" in declared(("load",))


@pytest.mark.parametrize(
    "path", ["scripts/bootstrap", "Dockerfile"], ids=["bootstrap", "dockerfile"]
)
def test_every_install_path_syncs_the_lock(path: str) -> None:
    """bootstrap (so scripts/test, scripts/up, .ci/run and the participants' workflow) and the
    image install with `uv sync --locked`: an out-of-date lock stops them, and no pip resolves."""
    text = (REPO_ROOT / path).read_text()
    commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    syncs = [line for line in commands if "uv sync" in line or '"$uv" sync' in line]
    assert syncs and all("--locked" in line for line in syncs), syncs
    installs = [line for line in commands if re.search(r"pip install", line)]
    assert all("uv==" in line for line in installs), f"pip installs more than uv: {installs}"


def test_bootstrap_and_the_image_pin_the_same_uv() -> None:
    bootstrap = re.search(
        r"^UV_VERSION=(\S+)$", (REPO_ROOT / "scripts/bootstrap").read_text(), re.M
    )
    image = re.search(r"^ARG UV_VERSION=(\S+)$", (REPO_ROOT / "Dockerfile").read_text(), re.M)
    assert bootstrap and image and bootstrap.group(1) == image.group(1)


def test_the_guardrails_tools_have_their_own_lock() -> None:
    """semgrep cannot share the lab's environment; its tools are locked in guardrails/."""
    tools = tomllib.loads((REPO_ROOT / "guardrails" / "pyproject.toml").read_text())
    assert {_name(r) for r in tools["project"]["dependencies"]} >= {"semgrep", "ruff"}
    lock = (REPO_ROOT / "guardrails" / "uv.lock").read_text()
    assert 'name = "semgrep"' in lock
    assert "guardrails" not in PYPROJECT["project"]["optional-dependencies"]


def test_a_second_bootstrap_keeps_the_venv_it_made() -> None:
    """scripts/bootstrap names the interpreter uv builds .venv from. A name uv cannot match with
    the venv's own (a pyenv shim's path) made every sync remove and rebuild .venv, under
    whatever ran from it at the time (CI's background image build did). A sync with the same
    extras as scripts/test's must change nothing."""
    uv = REPO_ROOT / ".venv-uv" / "bin" / "uv"
    if not uv.exists():
        pytest.skip("no .venv-uv: run scripts/bootstrap test guardrails first")
    script = (REPO_ROOT / "scripts" / "bootstrap").read_text()
    line = next(text for text in script.splitlines() if text.startswith("python="))
    python = subprocess.run(
        ["bash", "-c", f'{line}; echo "$python"'], capture_output=True, text=True, check=True
    ).stdout.strip()
    done = subprocess.run(
        [str(uv), "sync", "--dry-run", "--locked", "--python", python,
         "--extra", "fixes", "--extra", "load", "--extra", "test"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    assert "Would replace" not in said and "Would make no changes" in said, said
