"""One scan's page: counters, failure, rejected records and re-parsed locations, per location grants."""

from __future__ import annotations

from django.utils import timezone

from dedup.models import ScanRun
from tests.location_pages_base import BURLEIGH, POPUP, SYDNEY, LocationPagesTestCase


class ScanDetailTestCase(LocationPagesTestCase):
    sydney_scan: ScanRun
    burleigh_scan: ScanRun
    everywhere: ScanRun

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        now = timezone.now()
        cls.sydney_scan = ScanRun.objects.create(
            scope=[SYDNEY], scope_key=f"locations:{SYDNEY}", kind=ScanRun.INCREMENTAL, state=ScanRun.SUCCEEDED,
            contacts_seen=1234, pages=13, invalid_phones=7, rejected_count=3, clusters_found=42, auto_clusters=30,
            started_at=now, finished_at=now, holder="system:schedule",
            checkpoint={"stream": {"mode": "incremental", "since": "2026-01-01T00:00:00Z", "done": True}},
        )  # fmt: skip
        cls.burleigh_scan = ScanRun.objects.create(scope=[BURLEIGH], scope_key=f"locations:{BURLEIGH}",
                                                   state=ScanRun.FAILED, error_code="ERR_DEDUP_003",
                                                   error_message="ERR_DEDUP_003 index_build_failed: Podium is down")  # fmt: skip
        cls.everywhere = ScanRun.objects.create(scope_key="all", kind=ScanRun.REPARSE, state=ScanRun.RUNNING,
                                                contacts_seen=10, contacts_total=40, started_at=now, heartbeat_at=now,
                                                checkpoint={"reparsed": {POPUP: 10}})  # fmt: skip

    def url(self, scan: ScanRun) -> str:
        return f"/scans/{scan.pk}/"

    def test_the_manager_of_its_location_sees_it(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get(self.url(self.sydney_scan))
        assert response.status_code == 200
        body = response.content.decode()
        assert "Completed with 3 rejected" in body and "1234 contacts in 13 pages (incremental, changed after" in body
        assert "42 open (30 auto-mergeable)" in body and "system:schedule" in body
        assert "3 set aside, not indexed (an admin can see them)" in body

    def test_a_scan_of_every_location_is_everyones_and_live_while_it_runs(self) -> None:
        self.login(self.burleigh_manager)
        response = self.client.get(self.url(self.everywhere))
        body = response.content.decode()
        assert response.status_code == 200 and "Re-parse" in body
        assert f"{POPUP}</span>: 10 contacts" in body
        assert f'hx-get="/scans/{self.everywhere.pk}/"' in body  # polls while running
        partial = self.client.get(self.url(self.everywhere), HTTP_HX_REQUEST="true")
        assert partial.status_code == 200 and "<html" not in partial.content.decode()
        self.login(self.admin)
        assert "hx-get=\"/scans/" not in self.client.get(self.url(self.burleigh_scan)).content.decode()

    def test_a_failed_scan_says_why(self) -> None:
        self.login(self.admin)
        body = self.client.get(self.url(self.burleigh_scan)).content.decode()
        assert "ERR_DEDUP_003 index_build_failed: Podium is down" in body and "Failed" in body

    def test_the_manager_of_another_location_gets_404(self) -> None:
        self.login(self.burleigh_manager)
        assert self.client.get(self.url(self.sydney_scan)).status_code == 404
        self.login(self.sydney_manager)
        assert self.client.get(self.url(self.burleigh_scan)).status_code == 404
        assert self.client.get("/scans/999999/").status_code == 404

    def test_the_auditor_reads_every_scan(self) -> None:
        self.login(self.auditor)
        for scan in (self.sydney_scan, self.burleigh_scan, self.everywhere):
            assert self.client.get(self.url(scan)).status_code == 200

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.get(self.url(self.sydney_scan)))

    def test_the_scans_page_links_each_scan(self) -> None:
        self.login(self.sydney_manager)
        body = self.client.get("/scans/").content.decode()
        assert f'href="/scans/{self.sydney_scan.pk}/"' in body and f'href="/scans/{self.burleigh_scan.pk}/"' not in body
