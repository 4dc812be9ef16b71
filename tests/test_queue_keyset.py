"""The next cluster after one in the queue's order, ties included (``queue._after_q``'s row comparison)."""

from __future__ import annotations

from decimal import Decimal

from dedup import queue
from dedup.models import Cluster
from dedup.queue import QueueFilter
from tests.dashboard_base import SYDNEY, DashboardTestCase, build_cluster, same_person


class NextClusterKeysetTestCase(DashboardTestCase):
    def test_ties_on_confidence_go_by_id_in_the_sorts_direction_and_wrap(self) -> None:
        made = [build_cluster(same_person(SYDNEY, f"ct_6{n}0", name=f"Person {n}")) for n in range(3)]
        tied = [self.sydney_cluster, *made]
        Cluster.objects.filter(pk__in=[c.pk for c in tied]).update(confidence=Decimal("0.90"))
        for c in tied:
            c.refresh_from_db()
        by_id = sorted(tied, key=lambda c: c.pk)
        descending = QueueFilter(status=Cluster.OPEN, location_uid=SYDNEY)
        ascending = QueueFilter(status=Cluster.OPEN, location_uid=SYDNEY, sort="confidence")
        for flt, order in ((descending, list(reversed(by_id))), (ascending, by_id)):
            for here, expected in zip(order, order[1:] + order[:1], strict=True):
                found = queue.next_cluster(self.sydney_manager, flt, here)
                assert found is not None and found.pk == expected.pk, (flt.sort, here.pk)

    def test_a_higher_confidence_comes_before_the_tie_break(self) -> None:
        other = build_cluster(same_person(SYDNEY, "ct_700", name="Aroha Ngata"))
        Cluster.objects.filter(pk=self.sydney_cluster.pk).update(confidence=Decimal("0.95"))
        Cluster.objects.filter(pk=other.pk).update(confidence=Decimal("0.85"))
        self.sydney_cluster.refresh_from_db()
        flt = QueueFilter(status=Cluster.OPEN, location_uid=SYDNEY)
        found = queue.next_cluster(self.sydney_manager, flt, self.sydney_cluster)
        assert found is not None and found.pk == other.pk
