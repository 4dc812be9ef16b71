"""Item 17 of issue 12: after a decision, the next cluster of the same filter is one click (or no click) away."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

from dedup.models import Cluster, MergeOperation
from tests.dashboard_base import (
    BURLEIGH,
    SYDNEY,
    DashboardTestCase,
    build_cluster,
    household,
    make_operation,
    same_person,
)


class NextClusterTestCase(DashboardTestCase):
    households: list[Cluster]
    cross: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.households = [build_cluster(household(SYDNEY, f"ct_2{i}0")) for i in range(3)]
        for i, cluster in enumerate(cls.households):
            Cluster.objects.filter(pk=cluster.pk).update(confidence=Decimal("0.70") - Decimal(i) / 100)
        cls.cross = build_cluster([same_person(SYDNEY, "ct_500")[0], same_person(BURLEIGH, "ct_510")[1]])

    def test_the_queue_links_carry_the_filter(self) -> None:
        self.login(self.sydney_manager)
        rows = self.client.get("/clusters/", {"kind": "review"}).context["rows"]
        assert rows[0].url == f"/clusters/{self.households[0].cluster_id}/?kind=review&status=open"

    def test_the_cluster_page_offers_the_next_cluster_of_the_same_filter(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get(f"/clusters/{self.households[0].cluster_id}/", {"kind": "review"})
        assert response.context["next_url"] == f"/clusters/{self.households[1].cluster_id}/?kind=review&status=open"
        # The last one wraps round to the first; a cluster the manager cannot decide is never "next".
        last = self.client.get(f"/clusters/{self.households[2].cluster_id}/", {"kind": "review"})
        assert last.context["next_url"].startswith(f"/clusters/{self.households[0].cluster_id}/")

    def test_rejecting_leads_to_the_next_cluster_of_the_filter(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.post(
            f"/clusters/{self.households[0].cluster_id}/reject/", {"note": "two people", "filters": "kind=review"}
        )
        assert response.status_code == 302
        assert response["Location"] == f"/clusters/{self.households[1].cluster_id}/?kind=review&status=open"

    def test_rejecting_the_last_one_returns_to_the_filtered_queue(self) -> None:
        Cluster.objects.filter(pk__in=[c.pk for c in self.households[1:]]).update(status=Cluster.REJECTED)
        self.login(self.sydney_manager)
        response = self.client.post(
            f"/clusters/{self.households[0].cluster_id}/reject/", {"filters": "kind=review"}, follow=True
        )
        assert response.redirect_chain[-1][0] == "/clusters/?kind=review&status=open"
        assert "That was the last cluster you can decide in this filter." in response.content.decode()

    def test_the_merge_page_after_approving_offers_the_next_cluster(self) -> None:
        second = build_cluster(same_person(SYDNEY, "ct_130", name="Wei Chen"))
        op = make_operation(self.sydney_cluster, MergeOperation.PENDING)
        self.login(self.sydney_manager)
        response = self.client.get(f"/history/{op.pk}/", {"from": "kind=auto"})
        assert response.context["next_url"] == f"/clusters/{second.cluster_id}/?kind=auto&status=open"
        assert "Next cluster in your queue" in response.content.decode()

    def test_approve_redirects_to_the_merge_page_with_the_filter(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.post(f"/clusters/{self.sydney_cluster.cluster_id}/approve/", {"filters": "kind=auto"})
        location = urlsplit(response["Location"])
        assert location.path.startswith("/history/")
        assert parse_qs(location.query) == {"from": ["kind=auto&status=open"]}

    def test_a_forged_filter_cannot_reach_another_location(self) -> None:
        self.login(self.burleigh_manager)
        response = self.client.get(f"/clusters/{self.burleigh_cluster.cluster_id}/", {"location": SYDNEY})
        assert response.status_code == 200
        assert response.context["next_url"] == ""
        assert SYDNEY not in response.context["filter_query"]

    def test_an_auditor_has_no_next_cluster_to_decide(self) -> None:
        self.login(self.auditor)
        response = self.client.get(f"/clusters/{self.households[0].cluster_id}/")
        assert response.context["next_url"] == ""
