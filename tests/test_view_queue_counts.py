"""The queue's counts: from the tallies where they answer (the open queue by kind), always equal to a live count."""

from __future__ import annotations

from typing import Any

import pytest

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

    def test_the_decidable_segment_is_the_same_listed_or_inline(self) -> None:
        opened = Cluster.objects.filter(status=Cluster.OPEN)
        for user in (self.sydney_manager, self.both):
            listed = [set(qs.values_list("pk", flat=True)) for qs in access.split_by_decidable(user, opened)]
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(access, "_DECIDABLE_CROSS_LIST", 0)  # too many to list: the subquery inline
                inline = [set(qs.values_list("pk", flat=True)) for qs in access.split_by_decidable(user, opened)]
            assert listed == inline, user.username
        # The manager of both locations decides the cross-location cluster; Sydney's only reads it.
        assert self.cross.pk in access.split_by_decidable(self.both, opened)[0].values_list("pk", flat=True)
        decidable, readable = access.split_by_decidable(self.sydney_manager, opened)
        assert self.cross.pk not in decidable.values_list("pk", flat=True)
        assert self.cross.pk in readable.values_list("pk", flat=True)
