"""Changing the primary of a review cluster (POST /clusters/<id>/primary/); auto clusters keep the rule's."""

from __future__ import annotations

from dedup.models import AuditEvent, Cluster
from tests.dashboard_base import SYDNEY, DashboardTestCase, build_cluster, household


class ChangePrimaryTestCase(DashboardTestCase):
    household: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.household = build_cluster(household(SYDNEY, "ct_200"))

    def url(self, cluster: Cluster | None = None) -> str:
        return f"/clusters/{(cluster or self.household).cluster_id}/primary/"

    def other_member(self) -> str:
        uids = sorted(self.household.members.values_list("contact__uid", flat=True))
        return next(u for u in uids if u != self.household.suggested_primary_uid)

    def test_the_sydney_manager_picks_another_primary_and_the_preview_follows(self) -> None:
        self.login(self.sydney_manager)
        chosen = self.other_member()
        response = self.client.post(self.url(), {"primary_uid": chosen}, follow=True)
        assert "Primary changed" in response.content.decode()
        assert response.context["preview"].plan.primary_uid == chosen
        assert response.context["preview"].plan.chosen_by == "person"
        self.household.refresh_from_db()
        assert self.household.chosen_primary_uid == chosen
        assert AuditEvent.objects.filter(event_type="cluster.primary_changed").exists()

    def test_a_non_member_is_refused(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.post(self.url(), {"primary_uid": "ct_someone_else"}, follow=True)
        assert "Choose one of this cluster&#x27;s members" in response.content.decode()
        self.household.refresh_from_db()
        assert self.household.chosen_primary_uid == ""

    def test_an_auto_cluster_keeps_the_rules_primary(self) -> None:
        self.login(self.sydney_manager)
        uid = sorted(self.sydney_cluster.members.values_list("contact__uid", flat=True))[-1]
        response = self.client.post(self.url(self.sydney_cluster), {"primary_uid": uid}, follow=True)
        assert "only review clusters can change it" in response.content.decode()
        self.sydney_cluster.refresh_from_db()
        assert self.sydney_cluster.chosen_primary_uid == ""

    def test_the_burleigh_manager_gets_404(self) -> None:
        self.login(self.burleigh_manager)
        assert self.client.post(self.url(), {"primary_uid": self.other_member()}).status_code == 404

    def test_the_auditor_gets_403(self) -> None:
        self.login(self.auditor)
        assert self.client.post(self.url(), {"primary_uid": self.other_member()}).status_code == 403

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.post(self.url(), {"primary_uid": self.other_member()}), "/")

    def test_a_post_without_csrf_is_refused(self) -> None:
        client = self.csrf_client(self.sydney_manager)
        assert client.post(self.url(), {"primary_uid": self.other_member()}).status_code == 403
