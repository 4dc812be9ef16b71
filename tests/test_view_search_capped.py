"""The queue's search at scale: emails and phones are looked up as keys, a common name's count is capped."""

from __future__ import annotations

import pytest

from dedup import queue
from dedup.models import Cluster
from tests.dashboard_base import SYDNEY, DashboardTestCase, build_cluster, household, same_person


class CappedSearchTestCase(DashboardTestCase):
    chens: Cluster
    garcia_two: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.chens = build_cluster(household(SYDNEY, "ct_500"))
        cls.garcia_two = build_cluster(same_person(SYDNEY, "ct_510", name="José García"))

    def search(self, q: str) -> tuple[set[int], bool, str]:
        response = self.client.get("/clusters/", {"q": q})
        assert response.status_code == 200
        rows = {row.cluster.pk for row in response.context["rows"]}
        return rows, bool(response.context["count_capped"]), response.content.decode()

    def test_an_email_finds_its_cluster_in_any_case_and_is_not_searched_as_a_name(self) -> None:
        self.login(self.sydney_manager)
        for q in ("chen.family@example.com", "  Chen.Family@EXAMPLE.com "):
            assert self.search(q)[0] == {self.chens.pk}, q
        # The words of an email are not names: "example" names nobody here.
        assert self.search("nobody@example.com")[0] == set()

    def test_a_manager_does_not_find_another_locations_cluster_by_email_or_name(self) -> None:
        self.login(self.burleigh_manager)
        assert self.search("chen.family@example.com")[0] == set()
        assert self.search("garcia")[0] == set()
        assert self.search("Jack Smith")[0] == {self.burleigh_cluster.pk}

    def test_a_search_matching_more_than_the_cap_says_so_instead_of_counting(self) -> None:
        self.login(self.sydney_manager)
        rows, capped, _body = self.search("garcia")
        assert rows == {self.sydney_cluster.pk, self.garcia_two.pk} and not capped
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(queue, "SEARCH_COUNT_CAP", 1)
            rows, capped, body = self.search("garcia")
        assert capped and "more than 1 match" in body
        assert len(rows) == 1  # the best-scoring one; the rest is behind "narrow the search"

    def test_the_unsearched_queue_still_counts_exactly(self) -> None:
        self.login(self.admin)
        response = self.client.get("/clusters/")
        assert response.context["count_capped"] is False
        assert response.context["page"].paginator.count == Cluster.objects.filter(status=Cluster.OPEN).count()
        assert "more than" not in response.content.decode()

    def test_a_common_name_searched_cluster_by_cluster_finds_what_the_list_finds(self) -> None:
        for user in (self.sydney_manager, self.burleigh_manager, self.admin):
            self.login(user)
            for q in ("garcia", "maria garcia", "José", "jack smith", "chen"):
                by_list = self.search(q)[0]
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(queue, "NAME_LIST_CAP", 0)  # every name is "common"
                    assert self.search(q)[0] == by_list, (user.username, q)
        self.login(self.sydney_manager)
        assert self.search("garcia")[0] == {self.sydney_cluster.pk, self.garcia_two.pk}
