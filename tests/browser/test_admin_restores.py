"""An admin restores a duplicate that a merge deleted, marking them different people: re-created from its
snapshot with a new uid; consent never weaker than the merge computed."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from dedup.merge import approve_cluster
from dedup.models import MergeOperation, RestoreRecord, ReviewDecision
from tests.browser.conftest import Browser, People
from tests.dashboard_base import SYDNEY, build_cluster, flags_of, same_person


def test_an_admin_restores_a_merged_duplicate(browser: Browser, people: People, podium: Any) -> None:
    contacts = same_person(SYDNEY, "ct_100")
    server = podium(contacts)
    cluster = build_cluster(contacts)
    op = approve_cluster(cluster, user=people.sydney_manager, run_async=False)
    assert op.state == MergeOperation.PATCHED
    duplicate = sorted(op.duplicate_uids)[0]
    page = browser.page

    browser.sign_in(people.admin)
    browser.go("/contacts/deleted/")
    browser.screenshot("deleted")
    page.get_by_label("Search", exact=True).fill(duplicate)
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Restore…").click()
    expect(page.get_by_role("heading", name=f"Restore {duplicate}?")).to_be_visible()
    page.get_by_label("These are different people").check()
    browser.screenshot("confirm")
    page.get_by_role("button", name="Confirm: restore this contact").click()
    record = RestoreRecord.objects.get(contact_uid=duplicate)
    # The published API cannot un-delete: it was re-created from its snapshot, with a new uid, and the page
    # says so, the new uid beside the old one, with what could not be put back.
    expect(page.get_by_text(f"Re-created {duplicate} as {record.new_uid}.")).to_be_visible()
    expect(page.get_by_text("Not restored: the phone").first).to_contain_text("opted out of transactional messages")
    expect(page.locator("td", has_text=f"Re-created as {record.new_uid}")).to_be_visible()
    browser.screenshot("restored")

    assert record.method == RestoreRecord.RECREATED and record.marked_different_people
    recreated = server.state.get(record.new_uid)
    assert recreated["name"] == "Maria Garcia"
    # It keeps at least the consent the merge computed for what it holds (its email: marketing opted in
    # nowhere until the customer says so; its phone, opted out of texts on the survivor, is left off).
    assert flags_of(recreated)["marketingOptOut"] and not recreated["phoneNumbers"]
    assert ReviewDecision.objects.filter(decision=ReviewDecision.DIFFERENT_PEOPLE).exists()
