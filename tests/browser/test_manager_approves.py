"""A manager of Sydney reviews an auto cluster side by side, approves it, and sees it merged (against the emulator)."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from dedup.models import Cluster, Contact
from tests.browser.conftest import Browser, People
from tests.dashboard_base import SYDNEY, build_cluster, flags_of, same_person


def test_a_manager_reviews_and_approves_a_cluster_and_sees_it_merged(
    browser: Browser, people: People, podium: Any
) -> None:
    contacts = same_person(SYDNEY, "ct_100")
    server = podium(contacts)
    cluster = build_cluster(contacts)
    page = browser.page

    browser.sign_in(people.sydney_manager)
    browser.screenshot("dashboard")
    browser.go("/clusters/")
    browser.screenshot("queue")
    page.get_by_role("link", name=cluster.cluster_id).click()
    expect(page.get_by_role("heading", name=f"Cluster {cluster.cluster_id}")).to_be_visible()
    # The opt-out union, and each channel's consent in words, are spelled out before anyone approves.
    expect(page.get_by_text("Marketing: opted out", exact=True)).to_be_visible()
    expect(page.get_by_text("SMS: opted out", exact=True)).to_be_visible()
    expect(page.get_by_text("0412 345 678 — marketing: opted out (not opted in anywhere)")).to_be_visible()
    expect(page.locator("#strategy")).to_contain_text("Only then is each duplicate deleted in Podium")
    browser.screenshot("review")

    page.get_by_text("Approve merge…").click()
    page.get_by_role("button", name="Confirm: merge these contacts").click()
    page.wait_for_url("**/history/*/?from=*")
    expect(page.locator("#op-state")).to_have_text("Patched")
    expect(page.get_by_text("Merge approved.")).to_be_visible()
    browser.screenshot("merged")

    # The merge page says how it merged and what became of the duplicates.
    expect(page.locator("#strategy")).to_contain_text("Consolidate (published API)")
    expect(page.locator("#calls")).to_contain_text("attach tag Birthday March")
    expect(page.get_by_text("deleted in Podium by this merge (snapshot kept)")).to_have_count(2)

    cluster.refresh_from_db()
    assert cluster.status == Cluster.MERGED
    primary = server.state.get(cluster.suggested_primary_uid)
    assert flags_of(primary) == {"marketingOptOut": True, "smsOptOut": True, "emailOptOut": False}
    merged_away = Contact.objects.filter(merged_into_uid=cluster.suggested_primary_uid)
    assert merged_away.count() == 2
    assert {d["uid"] for d in server.state.deleted()} == set(merged_away.values_list("uid", flat=True))

    browser.go(f"/clusters/{cluster.cluster_id}/")
    expect(page.locator("#cluster-status")).to_have_text("Merged")
    expect(page.get_by_text("there is nothing left to decide")).to_be_visible()
