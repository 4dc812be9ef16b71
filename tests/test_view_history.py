"""Merge history: the list, one merge's opt-outs before/after, write-back and audit trail; admin retry/resolve."""

from __future__ import annotations

from dedup import audit
from dedup.models import AuditEvent, MergeOperation
from tests.dashboard_base import SYDNEY, DashboardTestCase, make_operation


class HistoryTestCase(DashboardTestCase):
    incident: MergeOperation
    burleigh_op: MergeOperation

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.incident = make_operation(cls.sydney_cluster, MergeOperation.COMPLIANCE_FAILED, error_code="ERR_DEDUP_010",
                                      requested_by=cls.sydney_manager, last_error="read-back showed smsOptOut false")
        cls.burleigh_op = make_operation(cls.burleigh_cluster, MergeOperation.UNRECONCILABLE, error_code="ERR_DEDUP_012")
        audit.record("merge.patch_failed", operation_ref=cls.incident.pk, location_uids=[SYDNEY],
                     payload={"error": "timeout"})

    def test_the_sydney_manager_sees_sydneys_merges(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get("/history/")
        assert response.status_code == 200
        assert [op.pk for op in response.context["page"]] == [self.incident.pk]
        assert b"sydney_manager" in response.content

    def test_filter_by_state(self) -> None:
        self.login(self.admin)
        response = self.client.get("/history/", {"state": "unreconcilable"})
        assert [op.pk for op in response.context["page"]] == [self.burleigh_op.pk]

    def test_a_merge_page_shows_opt_outs_before_and_the_union_after(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get(f"/history/{self.incident.pk}/")
        assert response.status_code == 200
        table = response.context["opt_outs"]
        assert len(table["rows"]) == 3
        assert table["union"] == [True, True, False]  # marketing and SMS were each on one duplicate
        body = response.content.decode()
        assert "Compliance incident" in body
        assert "merge.patch_failed" in body  # the op's own audit trail
        assert "+61 412 345 678" in body  # what was written back
        # A manager cannot retry: that is for admins.
        assert "Retry the opt-out write-back" not in body

    def test_the_burleigh_manager_gets_404_for_a_sydney_merge(self) -> None:
        self.login(self.burleigh_manager)
        assert self.client.get(f"/history/{self.incident.pk}/").status_code == 404
        assert self.client.post(f"/history/{self.incident.pk}/retry/").status_code == 404

    def test_the_admin_retries_a_compliance_incident(self) -> None:
        self.login(self.admin)
        assert b"Retry the opt-out write-back" in self.client.get(f"/history/{self.incident.pk}/").content
        response = self.client.post(f"/history/{self.incident.pk}/retry/")
        assert response.status_code == 302
        assert AuditEvent.objects.filter(event_type="merge.retry_requested", operation_ref=self.incident.pk).exists()

    def test_the_admin_resolves_an_unreconcilable_merge_with_a_note(self) -> None:
        self.login(self.admin)
        url = f"/history/{self.burleigh_op.pk}/resolve/"
        response = self.client.post(url, {"resolution": "retry", "note": ""}, follow=True)
        assert "Choose what Podium shows" in response.content.decode()
        self.client.post(url, {"resolution": "retry", "note": "Checked in Podium: nothing merged yet"})
        self.burleigh_op.refresh_from_db()
        assert self.burleigh_op.state == MergeOperation.MERGING
        event = AuditEvent.objects.get(event_type="merge.resolved")
        assert event.payload["note"] == "Checked in Podium: nothing merged yet"

    def test_retrying_a_merge_that_is_not_an_incident_is_refused_clearly(self) -> None:
        self.login(self.admin)
        response = self.client.post(f"/history/{self.burleigh_op.pk}/retry/", follow=True)
        assert "Only a compliance-failed merge can be retried" in response.content.decode()

    def test_managers_and_the_auditor_get_403_on_post(self) -> None:
        for user in (self.sydney_manager, self.auditor):
            self.login(user)
            assert self.client.post(f"/history/{self.incident.pk}/retry/").status_code == 403
            assert self.client.post(f"/history/{self.incident.pk}/resolve/",
                                    {"resolution": "retry", "note": "x"}).status_code == 403

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.get("/history/"), "/history/")
        self.assert_login_redirect(self.client.post(f"/history/{self.incident.pk}/retry/"), "/history/")

    def test_a_post_without_csrf_is_refused(self) -> None:
        response = self.csrf_client(self.admin).post(f"/history/{self.incident.pk}/retry/")
        assert response.status_code == 403
        assert not AuditEvent.objects.filter(event_type="merge.retry_requested").exists()
