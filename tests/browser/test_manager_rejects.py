"""A manager rejects a household (two people sharing a landline) as different people; it leaves the queue."""

from __future__ import annotations

from playwright.sync_api import expect

from dedup.models import Cluster, ReviewDecision
from tests.browser.conftest import Browser, People
from tests.dashboard_base import SYDNEY, build_cluster, household


def test_a_manager_rejects_a_household(browser: Browser, people: People) -> None:
    cluster = build_cluster(household(SYDNEY, "ct_200"))
    assert cluster.kind == Cluster.REVIEW
    page = browser.page

    browser.sign_in(people.sydney_manager)
    browser.go("/clusters/?kind=review")
    page.get_by_role("link", name=cluster.cluster_id).click()
    expect(page.get_by_text("different names: a household or a reassigned number")).to_be_visible()
    page.get_by_text("Reject: different people…").click()
    page.get_by_label("Note (optional)").fill("Wei and Li Chen share the home phone")
    browser.screenshot("household")
    page.get_by_role("button", name="Confirm: these are different people").click()
    # It was the only review cluster: back to the queue, in the same filter.
    page.wait_for_url("**/clusters/?kind=review&status=open")
    expect(page.get_by_text("remembered as different people")).to_be_visible()
    expect(page.get_by_text("That was the last cluster you can decide in this filter.")).to_be_visible()
    expect(page.get_by_role("link", name=cluster.cluster_id)).to_have_count(0)
    browser.screenshot("after")

    cluster.refresh_from_db()
    assert cluster.status == Cluster.REJECTED
    assert ReviewDecision.objects.filter(decision=ReviewDecision.DIFFERENT_PEOPLE).count() == 1
