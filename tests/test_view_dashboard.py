"""The dashboard: counts, incidents on top, charts, the live progress partial, scoped to the viewer's locations."""

from __future__ import annotations

from django.utils import timezone

from dedup.models import MergeBatch, MergeOperation, ScanRun, UncategorizedPhone
from tests.dashboard_base import SYDNEY, DashboardTestCase, make_operation


class DashboardViewTestCase(DashboardTestCase):
    def test_the_sydney_manager_sees_sydneys_state(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get("/")
        assert response.status_code == 200
        assert response.context["contacts_indexed"] == 3
        assert response.context["open_auto"] == 1
        assert response.context["open_review"] == 0
        assert b"Scan now" in response.content
        assert b"<svg" in response.content
        assert response.context["strategy"] == "consolidate"
        assert b"Merges go through Podium's published API" in response.content

    def test_the_auditor_sees_every_location_but_cannot_scan(self) -> None:
        self.login(self.auditor)
        response = self.client.get("/")
        assert response.status_code == 200
        assert response.context["contacts_indexed"] == 6
        assert response.context["open_auto"] == 2
        assert b"Scan now" not in response.content

    def test_incidents_are_shown_in_red_on_top_only_to_those_who_see_them(self) -> None:
        op = make_operation(self.sydney_cluster, MergeOperation.COMPLIANCE_FAILED, error_code="ERR_DEDUP_010")
        self.login(self.sydney_manager)
        body = self.client.get("/").content.decode()
        assert 'class="incidents"' in body
        assert body.index('class="incidents"') < body.index("<h1>Dashboard</h1>")
        assert f"/history/{op.pk}/" in body
        self.login(self.burleigh_manager)
        assert 'class="incidents"' not in self.client.get("/").content.decode()

    def test_merges_today_counts_finished_merges(self) -> None:
        make_operation(self.sydney_cluster, MergeOperation.PATCHED, finished_at=timezone.now())
        self.login(self.sydney_manager)
        assert self.client.get("/").context["merges_today"] == 1
        self.login(self.burleigh_manager)
        assert self.client.get("/").context["merges_today"] == 0

    def test_uncategorized_phones_are_counted(self) -> None:
        contact = self.sydney_cluster.members.all()[0].contact
        UncategorizedPhone.objects.create(contact=contact, location=self.sydney, raw="12", code="ERR_DEDUP_002",
                                          reason="too short", region="AU")
        self.login(self.sydney_manager)
        assert self.client.get("/").context["uncategorized"] == 1

    def test_the_progress_partial_shows_running_scans_and_batches(self) -> None:
        ScanRun.objects.create(scope=[SYDNEY], scope_key=f"loc:{SYDNEY}", state=ScanRun.RUNNING, contacts_seen=40,
                               contacts_total=100, started_at=timezone.now())
        batch = MergeBatch.objects.create(label="Approve 1 cluster(s)")
        make_operation(self.sydney_cluster, MergeOperation.PENDING, batch=batch)
        self.login(self.sydney_manager)
        response = self.client.get("/progress/", HTTP_HX_REQUEST="true")
        assert response.status_code == 200
        body = response.content.decode()
        assert 'hx-trigger="every 2s"' in body
        assert "Scan #" in body and "40 of 100 contacts" in body
        assert "Sydney CBD" in body and SYDNEY not in body  # the scope by name, not Podium's uid
        assert "Approve 1 cluster(s)" in body and "0 of 1 merged" in body
        # Burleigh's manager does not see Sydney's batch.
        self.login(self.burleigh_manager)
        assert "Approve 1 cluster(s)" not in self.client.get("/progress/").content.decode()

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.get("/"), "/")

    def test_an_expired_session_redirects_the_whole_page_from_an_htmx_poll(self) -> None:
        response = self.client.get("/progress/", HTTP_HX_REQUEST="true")
        assert response.status_code == 401
        assert response["HX-Redirect"].startswith("/accounts/login/?next=")

    def test_a_user_without_a_role_is_refused(self) -> None:
        from django.contrib.auth.models import User

        self.login(User.objects.create_user("nobody", password="x-irrelevant-pw"))
        assert self.client.get("/").status_code == 403
