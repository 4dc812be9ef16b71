"""An admin restores a duplicate that a merge took, marking them different people; opt-outs stay on."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from dedup.merge import approve_cluster
from dedup.models import MergeOperation, RestoreRecord, ReviewDecision
from tests.browser.conftest import Browser, People
from tests.dashboard_base import SYDNEY, build_cluster, same_person


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
    expect(page.get_by_text(f"Restored {duplicate}.")).to_be_visible()
    browser.screenshot("restored")

    restored = server.state.get(duplicate)
    assert restored.deleted_at is None
    # It keeps at least the opt-outs the merge computed (marketing and SMS were on in the cluster).
    assert restored.marketing_opt_out and restored.sms_opt_out
    assert RestoreRecord.objects.filter(contact_uid=duplicate, marked_different_people=True).exists()
    assert ReviewDecision.objects.filter(decision=ReviewDecision.DIFFERENT_PEOPLE).exists()
