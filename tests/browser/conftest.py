"""Browser tests: pytest-django's live server, Debian's Chromium driven by Playwright, the Podium emulator.

Without ``/usr/bin/chromium`` these tests are skipped with the reason, unless ``REQUIRE_BROWSER=1`` (CI),
where a missing browser fails them. Never run ``playwright install``: the system Chromium is used.

Screenshots go to ``test-artifacts/`` (gitignored) at 1280 px and 390 px wide.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connections

from dedup.models import Policy
from tests.audit_guard import lift_for_the_flush
from tests.dashboard_base import BURLEIGH, PASSWORD, SYDNEY, ensure_locations, ensure_role_groups, make_user
from tests.fixtures_emulator import empty_state

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}
# Scroll bars and sub-pixel rounding: a page "fits" when it is at most this much wider than the viewport.
OVERFLOW_TOLERANCE = 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)




@pytest.fixture(autouse=True)
def _flushable_audit_log(transactional_db: None) -> Iterator[None]:
    """Let the live-server test's database be emptied afterwards on PostgreSQL despite the audit guard.

    Migration 0002 refuses TRUNCATE of audit events, which is how pytest-django empties the database after
    a transactional test. The guard is switched off just for that flush and on again right after it (the
    flush emits ``post_migrate``), so every other test runs with it.
    """
    yield
    lift_for_the_flush()


@pytest.fixture
def chromium(require_browser: bool, transactional_db: None) -> Iterator[Any]:
    """Chromium for one test. Started after the test database (so it stops before the flush) and per test,
    so no Playwright event loop outlives the browser tests."""
    if not CHROMIUM.exists():
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if require_browser:
            pytest.fail(f"REQUIRE_BROWSER=1 but {message}")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread, and Django refuses ORM calls next to a
    # running loop. The test's own ORM calls are ordinary synchronous ones, so allow them, for this
    # test only (a subprocess started later, e.g. `check --deploy`, must not inherit the switch).
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        # The test's ORM calls ran next to Playwright's event loop, where Django keeps connections of
        # their own: closed here, or each browser test leaves a session open on the test database
        # (which then cannot be dropped at the end of the run).
        connections.close_all()
        playwright.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class People:
    """The named people of the dashboard tests, created in the live server's database."""

    def __init__(self) -> None:
        ensure_role_groups()
        self.sydney, self.burleigh = ensure_locations(SYDNEY, BURLEIGH)
        self.sydney_manager = make_user("sydney_manager", "manager", [self.sydney])
        self.burleigh_manager = make_user("burleigh_manager", "manager", [self.burleigh])
        self.auditor = make_user("auditor", "auditor")
        self.admin = make_user("admin", "admin")


@pytest.fixture
def people(transactional_db: None) -> People:
    return People()


@pytest.fixture
def podium(
    emulator_factory: Callable[..., Any], settings: Any, people: People
) -> Callable[[list[dict[str, Any]]], Any]:
    """``load(contacts)``: start an emulator (published API only) holding these v4 contacts; point Django at it."""

    def load(contacts: list[dict[str, Any]]) -> Any:
        state = empty_state()
        for contact in contacts:
            state.add_contact(contact)
        server = emulator_factory(state)
        settings.PODIUM_BASE_URL = server.url
        settings.PODIUM_ACCESS_TOKEN = server.token
        settings.PODIUM_CAPABILITIES = []
        Policy.objects.filter(pk=Policy.current().pk).update(rate_limit_per_minute=60_000)
        return server

    return load


class Browser:
    """A signed-in browser page with helpers for screenshots and the overflow check."""

    def __init__(self, chromium: Any, base_url: str, name: str) -> None:
        self.context = chromium.new_context(viewport=WIDE, accept_downloads=True)
        self.page = self.context.new_page()
        self.base_url = base_url
        self.name = name

    def go(self, path: str) -> Any:
        response = self.page.goto(self.base_url + path)
        assert response is not None and response.status < 400, (path, response and response.status)
        return response

    def sign_in(self, user: User) -> None:
        self.go("/accounts/login/")
        self.page.get_by_label("Username").fill(user.get_username())
        self.page.get_by_label("Password").fill(PASSWORD)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(self.base_url + "/")

    def screenshot(self, label: str) -> list[Path]:
        """Screenshots at 1280 px and 390 px wide; returns their paths. Asserts the narrow one fits."""
        ARTIFACTS.mkdir(exist_ok=True)
        paths = []
        for size, suffix in ((WIDE, "1280"), (NARROW, "390")):
            self.page.set_viewport_size(size)
            path = ARTIFACTS / f"{self.name}-{label}-{suffix}.png"
            self.page.screenshot(path=str(path), full_page=True)
            paths.append(path)
            if size is NARROW:
                self.assert_fits(label)
        self.page.set_viewport_size(WIDE)
        return paths

    def assert_fits(self, label: str) -> None:
        width = self.page.evaluate("document.documentElement.scrollWidth")
        viewport = self.page.evaluate("window.innerWidth")
        assert width <= viewport + OVERFLOW_TOLERANCE, f"{label}: page is {width}px wide in a {viewport}px viewport"

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def browser(live_server: Any, chromium: Any, request: pytest.FixtureRequest) -> Iterator[Browser]:
    b = Browser(chromium, live_server.url, request.node.name.removeprefix("test_"))
    yield b
    b.close()
