"""The merge history by location, read through the location each merge copies from its cluster."""

from __future__ import annotations

from dedup import access
from dedup.models import Cluster, MergeOperation
from tests.dashboard_base import BURLEIGH, SYDNEY, DashboardTestCase, build_cluster, make_operation, person


class HistoryVisibilityTestCase(DashboardTestCase):
    def visible(self, user: object) -> set[int]:
        return set(access.operations_visible_to(user).values_list("pk", flat=True))  # type: ignore[arg-type]

    def test_a_merge_copies_its_clusters_location_and_is_seen_where_the_cluster_is(self) -> None:
        sydney_op = make_operation(self.sydney_cluster, MergeOperation.PATCHED)
        assert sydney_op.location_id == self.sydney.pk
        # A within-location cluster of Sydney whose member also belongs to Burleigh stays Sydney's.
        shared = build_cluster([
            person("ct_9000001_aaaaaa", [SYDNEY, BURLEIGH], "Hemi Walker", phones=["0413 555 020"]),
            person("ct_9000002_bbbbbb", SYDNEY, "Hemi Walker", phones=["0413 555 020"]),
        ])  # fmt: skip
        assert shared.location_id == self.sydney.pk and shared.locations.count() == 2
        shared_op = make_operation(shared, MergeOperation.PATCHED)
        cross = build_cluster([
            person("ct_9100001_aaaaaa", SYDNEY, "Ruby Hall", phones=["0413 555 030"]),
            person("ct_9100002_bbbbbb", BURLEIGH, "Ruby Hall", phones=["0413 555 030"]),
        ])  # fmt: skip
        assert cross.kind == Cluster.CROSS
        cross_op = make_operation(cross, MergeOperation.PATCHED)
        assert cross_op.location_id is None
        assert self.visible(self.sydney_manager) == {sydney_op.pk, shared_op.pk, cross_op.pk}
        assert self.visible(self.burleigh_manager) == {cross_op.pk}
        assert self.visible(self.admin) == self.visible(self.auditor) == {sydney_op.pk, shared_op.pk, cross_op.pk}
        # The rule is the clusters' rule: a merge is seen exactly when its cluster is.
        for user in (self.sydney_manager, self.burleigh_manager):
            clusters = set(access.clusters_visible_to(user).values_list("pk", flat=True))
            assert self.visible(user) == {
                op.pk for op in (sydney_op, shared_op, cross_op) if op.cluster_id in clusters
            }
        self.client.force_login(self.burleigh_manager)
        body = self.client.get("/history/").content.decode()
        assert f"/history/{cross_op.pk}/" in body and f"/history/{shared_op.pk}/" not in body
