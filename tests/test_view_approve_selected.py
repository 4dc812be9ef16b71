"""Approving many auto clusters at once: tick, confirm on the next page, merges start as one batch."""

from __future__ import annotations

from dedup.models import Cluster, MergeBatch, MergeOperation
from tests.dashboard_base import SYDNEY, DashboardTestCase, build_cluster, household, same_person


class ApproveSelectedTestCase(DashboardTestCase):
    second: Cluster
    household: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.second = build_cluster(same_person(SYDNEY, "ct_150", name="Ana Lima"))
        cls.household = build_cluster(household(SYDNEY, "ct_200"))

    def ids(self, *clusters: Cluster) -> dict[str, list[str]]:
        return {"clusters": [str(c.pk) for c in clusters]}

    def test_the_sydney_manager_confirms_then_approves_two_auto_clusters(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get("/clusters/approve-selected/", self.ids(self.sydney_cluster, self.second))
        assert response.status_code == 200
        assert b"Approve 2 auto-mergeable clusters?" in response.content
        assert not MergeOperation.objects.exists()  # the GET only asks
        response = self.client.post("/clusters/approve-selected/", {**self.ids(self.sydney_cluster, self.second),
                                                                    "confirm": "1"})
        assert response.status_code == 302 and response["Location"] == "/"
        batch = MergeBatch.objects.get()
        assert set(batch.operations.values_list("cluster_id", flat=True)) == {self.sydney_cluster.pk, self.second.pk}
        assert batch.requested_by == self.sydney_manager

    def test_review_clusters_cannot_be_bulk_approved(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.post("/clusters/approve-selected/",
                                    {**self.ids(self.sydney_cluster, self.household), "confirm": "1"}, follow=True)
        assert "Only open auto-mergeable clusters can be approved together" in response.content.decode()
        assert not MergeOperation.objects.exists()

    def test_nothing_ticked_is_explained(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get("/clusters/approve-selected/", follow=True)
        assert "Tick at least one auto-mergeable cluster" in response.content.decode()

    def test_a_cluster_of_another_location_is_404(self) -> None:
        self.login(self.burleigh_manager)
        response = self.client.post("/clusters/approve-selected/",
                                    {**self.ids(self.burleigh_cluster, self.sydney_cluster), "confirm": "1"})
        assert response.status_code == 404
        assert not MergeOperation.objects.exists()

    def test_the_auditor_gets_403(self) -> None:
        self.login(self.auditor)
        assert self.client.post("/clusters/approve-selected/",
                                {**self.ids(self.sydney_cluster), "confirm": "1"}).status_code == 403

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.post("/clusters/approve-selected/", self.ids(self.sydney_cluster)), "/")

    def test_a_post_without_csrf_is_refused(self) -> None:
        client = self.csrf_client(self.sydney_manager)
        assert client.post("/clusters/approve-selected/", {**self.ids(self.sydney_cluster), "confirm": "1"}).status_code == 403
        assert not MergeOperation.objects.exists()
