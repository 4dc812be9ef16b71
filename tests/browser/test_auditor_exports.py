"""An auditor filters the audit log by a phone typed any way and downloads the filtered CSV."""

from __future__ import annotations

import csv
import io

from playwright.sync_api import expect

from dedup.merge import reject_cluster
from tests.browser.conftest import Browser, People
from tests.dashboard_base import SYDNEY, build_cluster, household, same_person


def test_an_auditor_filters_and_exports_the_audit_log(browser: Browser, people: People) -> None:
    rejected = build_cluster(household(SYDNEY, "ct_200"))
    reject_cluster(rejected, user=people.sydney_manager, note="=HYPERLINK(\"http://evil\")")
    other = build_cluster(same_person(SYDNEY, "ct_100"))
    reject_cluster(other, user=people.sydney_manager)
    page = browser.page

    browser.sign_in(people.auditor)
    browser.go("/audit/")
    expect(page.get_by_text("audit chain intact")).to_be_visible()
    page.get_by_label("Contact uid or phone").fill("(02) 9374 4000")
    page.get_by_label("Event type").select_option("cluster.rejected")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    browser.screenshot("filtered")

    with page.expect_download() as info:
        page.get_by_role("link", name="Export CSV").click()
    download = info.value
    assert download.suggested_filename.endswith(".csv")
    rows = list(csv.reader(io.StringIO(open(download.path(), encoding="utf-8").read())))
    assert rows[0][2] == "event_type"
    assert [r[2] for r in rows[1:]] == ["cluster.rejected"]
    assert "+61293744000" in rows[1][7]
    assert '"note": "=HYPERLINK' in rows[1][8]  # inside JSON, so the cell itself does not start with "="
