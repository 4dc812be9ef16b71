"""Rejecting a cluster as different people (POST /clusters/<id>/reject/): remembered per pair, audited."""

from __future__ import annotations

from dedup.models import AuditEvent, Cluster, ReviewDecision
from tests.dashboard_base import SYDNEY, DashboardTestCase, build_cluster, household


class RejectClusterTestCase(DashboardTestCase):
    household: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.household = build_cluster(household(SYDNEY, "ct_200"))

    def url(self) -> str:
        return f"/clusters/{self.household.cluster_id}/reject/"

    def test_the_sydney_manager_rejects_a_household(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.post(self.url(), {"note": "Wei and Li share the landline"}, follow=True)
        assert "remembered as different people" in response.content.decode()
        self.household.refresh_from_db()
        assert self.household.status == Cluster.REJECTED
        assert self.household.decided_by == self.sydney_manager
        pair = ReviewDecision.objects.get(decision=ReviewDecision.DIFFERENT_PEOPLE)
        assert (pair.uid_a, pair.uid_b) == ("ct_2000001_aaaaaa", "ct_2000002_bbbbbb")
        event = AuditEvent.objects.get(event_type="cluster.rejected")
        assert event.payload["note"] == "Wei and Li share the landline"
        assert event.actor == "user:sydney_manager"

    def test_rejecting_a_decided_cluster_says_so(self) -> None:
        self.login(self.sydney_manager)
        self.client.post(self.url())
        response = self.client.post(self.url(), follow=True)
        assert response.status_code == 200
        text = " ".join(str(m) for m in response.context["messages"])
        assert self.household.cluster_id in text

    def test_the_burleigh_manager_gets_404(self) -> None:
        self.login(self.burleigh_manager)
        assert self.client.post(self.url()).status_code == 404

    def test_the_auditor_gets_403(self) -> None:
        self.login(self.auditor)
        assert self.client.post(self.url()).status_code == 403
        self.household.refresh_from_db()
        assert self.household.status == Cluster.OPEN

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.post(self.url()), "/")

    def test_a_post_without_csrf_is_refused(self) -> None:
        assert self.csrf_client(self.sydney_manager).post(self.url()).status_code == 403
        self.household.refresh_from_db()
        assert self.household.status == Cluster.OPEN
