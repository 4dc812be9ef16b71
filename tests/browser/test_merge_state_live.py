"""Items 4 and 17 of issue 12 in a browser: the merge page follows the merge to its end without a reload; the
queue's select-all ticks every row and its bulk bar stays in view while the list scrolls."""

from __future__ import annotations

from typing import Any
from unittest import mock

from playwright.sync_api import expect

from dedup.merge import run_operation
from dedup.models import MergeOperation
from tests.browser.conftest import Browser, People
from tests.dashboard_base import SYDNEY, build_cluster, same_person
from tests.queue_helpers import bulk_auto_clusters


def test_the_merge_page_shows_the_merge_finish_without_a_reload(browser: Browser, people: People, podium: Any) -> None:
    contacts = same_person(SYDNEY, "ct_100")
    podium(contacts)
    cluster = build_cluster(contacts)
    page = browser.page
    browser.sign_in(people.sydney_manager)
    browser.go(cluster.get_absolute_url())
    # The worker is slow today: the merge is only queued when the page comes back.
    with mock.patch("dedup.merge.decisions.enqueue", lambda operation_id: None):
        page.get_by_text("Approve merge…").click()
        page.get_by_role("button", name="Confirm: merge these contacts").click()
        page.wait_for_url("**/history/*/**")
    expect(page.locator("#op-state")).to_have_text("Pending")
    expect(page.get_by_text("this page shows its state as it changes")).to_be_visible()
    page.evaluate("window.__notReloaded = true")

    op = MergeOperation.objects.get(cluster=cluster)
    run_operation(op.pk, worker="browser-test")
    op.refresh_from_db()
    assert op.state == MergeOperation.PATCHED
    expect(page.locator("#op-state")).to_have_text("Patched", timeout=10_000)
    assert page.evaluate("window.__notReloaded") is True
    # Settled: the fragment swapped in carries no trigger, so the polling has stopped.
    assert page.locator("#op-live").get_attribute("hx-trigger") is None
    browser.screenshot("merge-finished-live")


def test_select_all_and_the_bulk_bar_stays_in_view(browser: Browser, people: People) -> None:
    bulk_auto_clusters(people.sydney, 60)
    page = browser.page
    browser.sign_in(people.sydney_manager)
    browser.go("/clusters/?per_page=50")
    boxes = page.locator('input[name="clusters"]')
    assert boxes.count() == 50
    page.get_by_label("Select all on this page").check()
    assert all(boxes.nth(i).is_checked() for i in range(50))
    expect(page.get_by_text("50 selected")).to_be_visible()
    boxes.nth(3).uncheck()
    assert page.get_by_label("Select all on this page").evaluate("el => el.indeterminate") is True

    page.mouse.wheel(0, 3000)
    page.wait_for_function("window.scrollY > 1000")
    bar = page.locator(".bulk-bar").bounding_box()
    assert bar is not None and 0 <= bar["y"] < 50, bar
    expect(page.get_by_role("button", name="Approve selected auto clusters…")).to_be_in_viewport()
    browser.screenshot("queue-scrolled")

    page.get_by_role("link", name="Approve all auto clusters matching this filter…").click()
    expect(page.locator("#approvable-count")).to_have_text("60")
