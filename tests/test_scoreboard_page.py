"""The projected scoreboard in a real browser: Debian's Chromium driven by Playwright."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests import test_teams
from tests.conftest import need_server
from tests.test_teams import Room, snapshot

served = test_teams.served  # the runner's app with teams, on a real port

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium")
    if executable is None:
        need_server("Chromium", "apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield browser
        finally:
            browser.close()


def test_the_page_ranks_the_teams_and_reloads_itself(
    served: tuple[Room, str], browser: Any
) -> None:
    room, url = served
    workshop = room.workshop
    workshop.add_teams(["red", "blue", "green"])
    workshop.note_live(["fp-drift"], 900.0, _now())
    room.board.publish(snapshot(["fp-drift"], 900 + 12 * 60))
    live = ["fp-drift"]
    red = workshop.file_claim("red", "fp-drift", "float money", [], None, live, {}, 900 + 720)
    workshop.judge(red.id, "accept", "")
    workshop.unlock_hint("blue", "fp-drift", [])

    page = browser.new_page()
    page.goto(f"{url}/scoreboard.html")
    assert page.title() == "3 A.M. Drill: scoreboard"
    refresh = page.locator("meta[http-equiv=refresh]").get_attribute("content")
    assert refresh is not None and int(refresh) > 0
    rows = page.locator("tbody tr")
    assert rows.count() == 3
    first = rows.nth(0)
    assert first.get_attribute("data-team") == "red"
    assert first.locator("td.points").inner_text() == str(
        workshop.program.scoring.root_cause + workshop.program.scoring.dark_room_bonus
    )
    assert rows.nth(2).get_attribute("data-team") == "blue"  # a hint costs points
    body = page.locator("body").inner_text()
    assert "fp-drift" not in body and "reveal mode" in body  # the dark room stays dark

    # Reveal mode: the page shows each team's scenario once it has reloaded by itself.
    room.board.publish(snapshot(["fp-drift"], 3000, reveal=True))
    with page.expect_navigation(timeout=(int(refresh) + 5) * 1000):
        pass
    details = page.locator("tr[data-team=red] td.details").inner_text()
    assert "fp-drift" in details and "root cause in 12 min (dark room)" in details
    assert page.locator("p.hidden").count() == 0


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
