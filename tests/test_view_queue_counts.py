"""The queue's counts: from the tallies where they answer (the open queue by kind), always equal to a live count."""

from __future__ import annotations

from typing import Any

from dedup import access
from dedup.models import Cluster
from tests.dashboard_base import (
    BURLEIGH,
    SYDNEY,
    DashboardTestCase,
    build_cluster,
    ensure_locations,
    household,
    make_user,
    person,
)


class QueueCountsTestCase(DashboardTestCase):
    cross: Cluster
    both: Any

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        build_cluster(household(SYDNEY, "ct_800"))  # a review cluster
        cls.cross = build_cluster([
            person("ct_8100001_aaaaaa", SYDNEY, "Tane Ngata", phones=["0413 555 010"]),
            person("ct_8100002_bbbbbb", BURLEIGH, "Tane Ngata", phones=["0413 555 010"]),
        ])  # fmt: skip
        build_cluster(household(BURLEIGH, "ct_820"), status=Cluster.REJECTED)
        cls.both = make_user("both_manager", "manager", ensure_locations(SYDNEY, BURLEIGH))

    def count(self, user: Any, query: str) -> int:
        self.client.force_login(user)
        response = self.client.get(f"/clusters/?{query}")
        assert response.status_code == 200
        return int(response.context["page"].paginator.count)

    def live(self, user: Any, **filters: Any) -> int:
        return access.restrict_clusters(user, Cluster.objects.filter(status=Cluster.OPEN, **filters)).count()

    def test_every_role_sees_the_live_count_for_every_kind(self) -> None:
        assert self.cross.kind == Cluster.CROSS
        for user in (self.admin, self.auditor, self.sydney_manager, self.burleigh_manager, self.both):
            for kind in ("", Cluster.AUTO, Cluster.REVIEW, Cluster.CROSS):
                expected = self.live(user, **({"kind": kind} if kind else {}))
                assert self.count(user, f"kind={kind}") == expected, (user.username, kind)
        # The Sydney manager reads the cross-location cluster (one of its locations is theirs), once.
        assert self.count(self.sydney_manager, "kind=cross") == 1
        assert self.count(self.both, "") == self.live(self.both) == 4

    def test_closed_clusters_are_counted_only_when_asked_for(self) -> None:
        assert self.count(self.admin, "status=rejected") == Cluster.objects.filter(status=Cluster.REJECTED).count() == 1
