"""The review queue: filtered by location, kind, confidence and status; sorted; paginated in constant queries."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from dedup.models import Cluster
from tests.dashboard_base import BURLEIGH, SYDNEY, DashboardTestCase, build_cluster, household, same_person


class ClusterListTestCase(DashboardTestCase):
    household: Cluster
    cross: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.household = build_cluster(household(SYDNEY, "ct_200"))
        cls.cross = build_cluster([same_person(SYDNEY, "ct_500")[0], same_person(BURLEIGH, "ct_510")[1]])

    def ids(self, response: Any) -> list[int]:
        return [row.cluster.pk for row in response.context["rows"]]

    def test_the_sydney_manager_sees_sydneys_clusters_and_the_cross_location_one(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get("/clusters/")
        assert response.status_code == 200
        assert set(self.ids(response)) == {self.sydney_cluster.pk, self.household.pk, self.cross.pk}

    def test_the_burleigh_manager_does_not_see_sydneys_clusters(self) -> None:
        self.login(self.burleigh_manager)
        ids = set(self.ids(self.client.get("/clusters/")))
        assert ids == {self.burleigh_cluster.pk, self.cross.pk}
        # Filtering by a location that is not theirs is not possible: the choice is refused.
        response = self.client.get("/clusters/", {"location": SYDNEY})
        assert "location" in response.context["form"].errors

    def test_the_auditor_sees_everything_but_cannot_select(self) -> None:
        self.login(self.auditor)
        response = self.client.get("/clusters/")
        assert len(self.ids(response)) == 4
        assert response.context["can_bulk"] is False
        assert b'name="clusters"' not in response.content

    def test_filters(self) -> None:
        self.login(self.admin)
        assert self.ids(self.client.get("/clusters/", {"kind": "review"})) == [self.household.pk]
        assert self.ids(self.client.get("/clusters/", {"kind": "cross"})) == [self.cross.pk]
        assert set(self.ids(self.client.get("/clusters/", {"location": BURLEIGH}))) == {
            self.burleigh_cluster.pk, self.cross.pk
        }
        low = self.ids(self.client.get("/clusters/", {"max_confidence": "0.79"}))
        assert self.sydney_cluster.pk not in low and self.household.pk in low
        Cluster.objects.filter(pk=self.household.pk).update(status=Cluster.REJECTED)
        assert self.household.pk not in self.ids(self.client.get("/clusters/"))
        assert self.ids(self.client.get("/clusters/", {"status": "rejected"})) == [self.household.pk]

    def test_a_mangled_filter_shows_the_error_and_still_a_page(self) -> None:
        self.login(self.admin)
        response = self.client.get("/clusters/", {"min_confidence": "lots", "max_confidence": "0.1",
                                                  "page": "-3", "per_page": "9999"})
        assert response.status_code == 200
        assert "min_confidence" in response.context["form"].errors

    def test_sort_by_confidence(self) -> None:
        self.login(self.admin)
        ids = self.ids(self.client.get("/clusters/", {"sort": "confidence"}))
        confidences = [Cluster.objects.get(pk=i).confidence for i in ids]
        assert confidences == sorted(confidences)

    def test_only_open_auto_clusters_the_user_may_act_on_are_selectable(self) -> None:
        self.login(self.sydney_manager)
        rows = {row.cluster.pk: row.selectable for row in self.client.get("/clusters/").context["rows"]}
        assert rows == {self.sydney_cluster.pk: True, self.household.pk: False, self.cross.pk: False}

    def test_pages_cost_the_same_number_of_queries_whatever_their_size(self) -> None:
        for i in range(50):
            build_cluster(same_person(SYDNEY, f"ct_7{i:02d}"))
        self.login(self.sydney_manager)
        self.client.get("/clusters/")  # warm the session and the policy row
        counts = {}
        for per_page in (25, 50):
            with CaptureQueriesContext(connection) as ctx:
                response = self.client.get("/clusters/", {"per_page": per_page})
            assert len(response.context["rows"]) == per_page
            counts[per_page] = len(ctx.captured_queries)
        assert counts[25] == counts[50], counts

    def test_pagination_keeps_the_filters(self) -> None:
        for i in range(30):
            build_cluster(same_person(SYDNEY, f"ct_8{i:02d}"))
        self.login(self.admin)
        response = self.client.get("/clusters/", {"kind": "auto"})
        assert response.context["page"].paginator.num_pages == 2
        assert b"kind=auto&amp;status=open&amp;page=2" in response.content or b"page=2" in response.content

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.get("/clusters/"), "/clusters/")

    def test_confidence_is_shown_with_two_decimals(self) -> None:
        self.login(self.admin)
        assert Decimal("0.00") <= self.sydney_cluster.confidence <= Decimal("1.00")
        assert str(self.sydney_cluster.confidence).encode() in self.client.get("/clusters/").content
