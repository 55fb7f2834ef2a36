"""fp-drift in four directions, through the real `drill` CLI against a native lab on Postgres.

Shipped code with the triggers on must fail `drill verify`; the reference fix must pass with
the triggers still on; the shipped code with every trigger off must pass (the clean baseline);
every shortcut under tests/shortcuts/ (a feature switched off instead of a fix) must fail.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.drill_labs import native_labs
from tests.labs import check_results, clean_baseline, explain
from tests.labs import verify as run_verify

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# Long enough for some 800 payments at 20 users (the scenario needs 500), short enough for CI.
VERIFY_SECONDS = "25"
SHORTCUTS = REPO_ROOT / "tests" / "shortcuts"
FX_ACTED = "trigger.ledger.fx_conversion.acted"
COMMIT_ACTED = "trigger.ledger.commit_latency_ms.acted"


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    """Start the ledger from a tree (patched or not) with its own database; stop it after."""
    with native_labs(tmp_path, "ledger") as labs:

        def start(
            patch: str | None = None, sqlite: bool = False, shortcut: str | None = None
        ) -> tuple[Path, dict[str, str]]:
            patches = [SHORTCUTS / f"fp-drift-{shortcut}.patch"] if shortcut else []
            database = None
            if not sqlite:
                postgres_url = request.getfixturevalue("postgres_url")
                database = f"{postgres_url.rsplit('/', 1)[1]}_{len(labs.started)}"
            return labs.start(patch, patches, database)

        yield start


def verify(root: Path, env: dict[str, str], *extra: str) -> tuple[int, dict]:
    duration = () if "--duration" in extra else ("--duration", VERIFY_SECONDS)
    return run_verify(root, env, "fp-drift", *duration, *extra)


@pytest.mark.drill
def test_shipped_code_with_triggers_fails(lab) -> None:  # type: ignore[no-untyped-def]
    """Shipped ledger + fp-drift triggers: balances drift and retried payments post twice."""
    root, env = lab()
    code, result = verify(root, env)
    assert code == 1, explain(result)
    assert result["figures"]["ledger.payments"] >= 500
    assert result["figures"]["ledger.balance_drift"] > 0
    assert result["figures"]["ledger.duplicate_postings"] > 0
    assert not check_results(result)["ledger.balance_drift"]
    assert not check_results(result)["ledger.duplicate_postings"]
    # It fails on the defects, not because the triggers missed: both acted, clients retried.
    assert check_results(result)[FX_ACTED]
    assert check_results(result)[COMMIT_ACTED]
    assert check_results(result)["ledger.retried_payments"]
    flags = json.loads((root / ".drill" / "flags.json").read_text())["flags"]
    assert flags["ledger.fx_conversion"]["defaultVariant"] == "off", "verify restores the flags"


@pytest.mark.drill
def test_reference_fix_passes_with_triggers_on(lab) -> None:  # type: ignore[no-untyped-def]
    """solutions/fp-drift.patch applied: every SLA holds with the triggers still on."""
    root, env = lab(patch="fp-drift")
    code, result = verify(root, env)
    assert code == 0, explain(result)
    assert result["figures"]["ledger.balance_drift"] == 0
    assert result["figures"]["ledger.duplicate_postings"] == 0
    assert result["figures"]["ledger.misbooked_postings"] == 0
    assert result["figures"]["ledger.payments"] >= 500
    assert result["figures"]["ledger.retried_payments"] > 0
    assert check_results(result)[FX_ACTED] and check_results(result)[COMMIT_ACTED]


@pytest.mark.drill
def test_shortcut_dropping_conversion_fails(lab) -> None:  # type: ignore[no-untyped-def]
    """Reference fix minus FX conversion (every payment booked in its own currency): verify
    fails, naming the misbooked postings and the conversion trigger that never acted."""
    root, env = lab(patch="fp-drift", shortcut="drop-conversion")
    code, result = verify(root, env)
    assert code == 1, explain(result)
    checks = check_results(result)
    assert not checks["ledger.misbooked_postings"], explain(result)
    assert not checks["ledger.balance_drift"], explain(result)
    assert not checks[FX_ACTED], explain(result)
    # Everything else of the fix still holds: the verdict names what the shortcut broke.
    assert result["figures"]["ledger.duplicate_postings"] == 0
    assert checks[COMMIT_ACTED]


@pytest.mark.drill
def test_shipped_code_passes_the_clean_baseline(lab) -> None:  # type: ignore[no-untyped-def]
    """Shipped ledger with every trigger off looks healthy: 'fine in staging'."""
    result = clean_baseline(lab, verify)
    assert result["figures"]["ledger.misbooked_postings"] == 0


def test_sqlite_lab_smoke(lab) -> None:  # type: ignore[no-untyped-def]
    """The default SQLite lab runs a verify end to end and keeps exact balances when clean."""
    root, env = lab(sqlite=True)
    assert (root / ".drill" / "ledger.db").exists()
    code, result = verify(root, env, "--baseline", "--users", "5", "--duration", "8")
    assert code in (0, 1)
    assert result["figures"]["ledger.payments"] > 0
    assert result["figures"]["ledger.balance_drift"] == 0
    assert result["figures"]["ledger.duplicate_postings"] == 0
