"""Scan runs with their progress (live via htmx), and "Scan now" scoped to the person's locations."""

from __future__ import annotations

from django.utils import timezone

from dedup.models import ScanRun
from tests.dashboard_base import BURLEIGH, SYDNEY, DashboardTestCase


class ScansTestCase(DashboardTestCase):
    def test_the_sydney_manager_sees_scans_of_sydney_and_of_everything(self) -> None:
        ScanRun.objects.create(scope=[], scope_key="all", state=ScanRun.SUCCEEDED, contacts_seen=10,
                               duplicate_rate=0.125, clusters_found=3, started_at=timezone.now(),
                               finished_at=timezone.now())
        ScanRun.objects.create(scope=[SYDNEY], scope_key=f"loc:{SYDNEY}", state=ScanRun.RUNNING, contacts_seen=5,
                               contacts_total=20, started_at=timezone.now())
        ScanRun.objects.create(scope=[BURLEIGH], scope_key=f"loc:{BURLEIGH}", state=ScanRun.SUCCEEDED)
        self.login(self.sydney_manager)
        response = self.client.get("/scans/")
        assert response.status_code == 200
        assert [s.scope for s in response.context["scans"]] == [[SYDNEY], []]
        body = response.content.decode()
        assert "5 of 20 contacts" in body and "12.5%" in body
        assert 'hx-trigger="every 2s"' in body  # a scan is running: poll quickly
        partial = self.client.get("/scans/", HTTP_HX_REQUEST="true")
        assert b"<html" not in partial.content and b'id="scan-table"' in partial.content

    def test_the_auditor_reads_but_has_no_scan_button(self) -> None:
        self.login(self.auditor)
        assert b"Scan now" not in self.client.get("/scans/").content

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.get("/scans/"), "/scans/")


class ScanNowTestCase(DashboardTestCase):
    def test_the_sydney_manager_scans_sydney_only(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.post("/scans/start/", {"next": "/"}, follow=True)
        run = ScanRun.objects.get()
        assert run.scope == [SYDNEY]
        assert run.requested_by == self.sydney_manager
        assert f"Scan #{run.pk} started for Sydney CBD." in response.content.decode()

    def test_a_second_scan_of_the_same_scope_names_the_holder(self) -> None:
        ScanRun.objects.create(scope=[SYDNEY], scope_key=f"loc:{SYDNEY}", state=ScanRun.RUNNING, holder="user:admin")
        self.login(self.sydney_manager)
        response = self.client.post("/scans/start/", follow=True)
        text = " ".join(str(m) for m in response.context["messages"])
        assert "ERR_DEDUP_014" in text

    def test_the_admin_scans_every_location(self) -> None:
        self.login(self.admin)
        self.client.post("/scans/start/", {"full": "on"})
        run = ScanRun.objects.get()
        assert run.scope == [] and run.kind == ScanRun.FULL

    def test_the_auditor_gets_403(self) -> None:
        self.login(self.auditor)
        assert self.client.post("/scans/start/").status_code == 403
        assert not ScanRun.objects.exists()

    def test_an_offsite_next_is_ignored(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.post("/scans/start/", {"next": "https://evil.example/"})
        assert response["Location"] == "/scans/"

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.post("/scans/start/"), "/")
        assert not ScanRun.objects.exists()

    def test_a_post_without_csrf_is_refused(self) -> None:
        assert self.csrf_client(self.sydney_manager).post("/scans/start/").status_code == 403
        assert not ScanRun.objects.exists()
