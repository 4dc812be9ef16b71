"""Item 8 of issue 12: the queue shows what this person can decide first, and another location's customers
masked to someone not granted that location (the queue, the cluster page, the merge page)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from dedup import access, audit
from dedup.merge.planning import plan_payload
from dedup.models import Cluster, MergeOperation
from dedup.survivorship import MergePlan
from tests.dashboard_base import (
    BURLEIGH,
    SYDNEY,
    DashboardTestCase,
    build_cluster,
    household,
    make_operation,
    person,
    same_person,
)


def cross_pair(prefix: str = "ct_600") -> list[Any]:
    """One customer at Sydney and at Burleigh Heads; the Burleigh record holds a phone and email of its own."""
    return [
        person(f"{prefix}0001_aaaaaa", SYDNEY, "Maria Garcia", phones=["+61 412 345 678"],
               emails=["maria@example.com"], address="1 George St, Sydney"),
        person(f"{prefix}0002_bbbbbb", BURLEIGH, "Mariana Gomez", phones=["0412 345 678", "0455 123 987"],
               emails=["mariana.gomez@example.net"], address="9 Gold Coast Hwy, Burleigh Heads",
               attributes=[("Birthday", "1990-04-01")]),
    ]


class DecidableFirstTestCase(DashboardTestCase):
    household: Cluster
    cross: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.household = build_cluster(household(SYDNEY, "ct_200"))
        cls.cross = build_cluster(cross_pair())
        # The cross-location cluster is the most confident one: by confidence alone it would open the queue.
        Cluster.objects.filter(pk=cls.cross.pk).update(confidence=Decimal("1.00"))
        Cluster.objects.filter(pk=cls.sydney_cluster.pk).update(confidence=Decimal("0.90"))

    def ids(self, response: Any) -> list[int]:
        return [row.cluster.pk for row in response.context["rows"]]

    def test_the_manager_sees_what_they_can_decide_first(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get("/clusters/")
        assert self.ids(response) == [self.sydney_cluster.pk, self.household.pk, self.cross.pk]
        rows = response.context["rows"]
        assert [r.decidable for r in rows] == [True, True, False]
        assert [r.starts_readable_only for r in rows] == [False, False, True]
        body = response.content.decode()
        assert "not yours to decide" in body and "read only" in body

    def test_the_admin_decides_everything_so_the_order_is_by_confidence(self) -> None:
        self.login(self.admin)
        ids = self.ids(self.client.get("/clusters/"))
        assert ids[0] == self.cross.pk
        assert set(ids) == {self.cross.pk, self.sydney_cluster.pk, self.household.pk, self.burleigh_cluster.pk}

    def test_the_auditor_decides_nothing_so_the_order_is_by_confidence(self) -> None:
        self.login(self.auditor)
        response = self.client.get("/clusters/")
        assert self.ids(response)[0] == self.cross.pk
        assert b"not yours to decide" not in response.content

    def test_the_chosen_sort_applies_within_each_part(self) -> None:
        self.login(self.sydney_manager)
        ids = self.ids(self.client.get("/clusters/", {"sort": "confidence"}))
        assert ids == [self.household.pk, self.sydney_cluster.pk, self.cross.pk]

    def test_pages_cut_across_the_two_parts_in_order_and_in_constant_queries(self) -> None:
        for i in range(30):
            build_cluster(same_person(SYDNEY, f"ct_7{i:02d}"))
        for i in range(3):
            build_cluster(cross_pair(f"ct_8{i:02d}"))
        self.login(self.sydney_manager)
        self.client.get("/clusters/")
        seen: list[int] = []
        counts = []
        for page in (1, 2):
            with CaptureQueriesContext(connection) as ctx:
                response = self.client.get("/clusters/", {"page": page})
            counts.append(len(ctx.captured_queries))
            seen += self.ids(response)
        assert len(seen) == len(set(seen)) == 36
        decidable = [access.can_act_on_cluster(self.sydney_manager, Cluster.objects.get(pk=pk)) for pk in seen]
        assert decidable == [True] * 32 + [False] * 4
        assert response.context["page"].paginator.count == 36
        # Page 2 reads both parts, page 1 only the first: at most one query apart, whatever the page size.
        assert abs(counts[0] - counts[1]) <= 1, counts
        with CaptureQueriesContext(connection) as ctx:
            self.client.get("/clusters/", {"per_page": 50})
        assert len(ctx.captured_queries) == counts[1], (counts, len(ctx.captured_queries))

    def test_the_split_counts_equal_the_plain_counts(self) -> None:
        for user in (self.sydney_manager, self.burleigh_manager, self.auditor, self.admin):
            everything = Cluster.objects.filter(status=Cluster.OPEN)
            decidable, readable = access.split_by_decidable(user, everything)
            n_decidable, n_readable = access.count_split(user, everything)
            assert (decidable.count(), readable.count()) == (n_decidable, n_readable), user
            assert n_decidable + n_readable == access.restrict_clusters(user, everything).count(), user
            assert all(access.can_act_on_cluster(user, c) for c in decidable.prefetch_related("locations")), user

    # --- masking ---------------------------------------------------------------------------------

    def test_the_queue_masks_the_other_locations_member(self) -> None:
        self.login(self.sydney_manager)
        rows = {r.cluster.pk: r for r in self.client.get("/clusters/").context["rows"]}
        assert rows[self.cross.pk].names == "Maria Garcia · M••• G•••"
        self.login(self.burleigh_manager)
        rows = {r.cluster.pk: r for r in self.client.get("/clusters/").context["rows"]}
        assert rows[self.cross.pk].names == "M••• G••• · Mariana Gomez"
        self.login(self.admin)
        body = self.client.get("/clusters/").content.decode()
        assert "Maria Garcia · Mariana Gomez" in body

    def test_the_cluster_page_masks_the_other_locations_member(self) -> None:
        self.login(self.sydney_manager)
        body = self.client.get(f"/clusters/{self.cross.cluster_id}/").content.decode()
        for secret in ("Mariana Gomez", "0455 123 987", "mariana.gomez@example.net", "Gold Coast Hwy", "1990-04-01"):
            assert secret not in body, secret
        for masked in ("M••• G•••", "045• ••• •87", "m•••@example.net"):
            assert masked in body, masked
        # Their own customer, and the phone both members hold, are shown in full.
        assert "Maria Garcia" in body and "maria@example.com" in body and "+61 412 345 678" in body
        assert "1 member belongs to a location you are not granted" in body

    def test_the_admin_and_an_ungranted_auditor_read_every_member(self) -> None:
        for user in (self.admin, self.auditor):
            self.login(user)
            body = self.client.get(f"/clusters/{self.cross.cluster_id}/").content.decode()
            assert "Mariana Gomez" in body and "0455 123 987" in body and "mariana.gomez@example.net" in body
            assert "•••" not in body

    def test_the_merge_page_masks_what_came_from_the_other_location(self) -> None:
        op = make_operation(self.cross, MergeOperation.PATCHED)
        # The merge's audit trail carries the plan's values (as an approval records it).
        audit.record("merge.planned", cluster_ref=self.cross.cluster_id, operation_ref=op.pk,
                     location_uids=[SYDNEY, BURLEIGH], payload=plan_payload(MergePlan.from_dict(op.plan)))
        audit.record("merge.refused", cluster_ref=self.cross.cluster_id, operation_ref=op.pk,
                     location_uids=[SYDNEY, BURLEIGH],
                     payload={"writeBack": {"name": "Mariana Gomez", "email": "mariana.gomez@example.net",
                                            "address": {"addressLine1": "9 Gold Coast Hwy, Burleigh Heads"}},
                              "losses": [{"field": "phone", "value": "0455 123 987", "fromUid": "ct_6000002_bbbbbb"}]})
        self.login(self.sydney_manager)
        response = self.client.get(f"/history/{op.pk}/")
        assert response.status_code == 200
        # The Burleigh record holds more, so it survives: its email is shown masked, the Sydney member's
        # email it cannot carry (a loss) in full.
        emails = [e for e, _added in response.context["survivor"].emails]
        assert emails == ["m•••@example.net"]
        losses = {loss["value"] for loss in response.context["accepted_losses"]}
        assert "maria@example.com" in losses and "1 George St, Sydney" in losses
        body = response.content.decode()
        for secret in ("Mariana Gomez", "mariana.gomez@example.net", "0455 123 987", "Gold Coast Hwy", "1990-04-01"):
            assert secret not in body, secret
        self.login(self.admin)
        admin_page = self.client.get(f"/history/{op.pk}/")
        assert [e for e, _added in admin_page.context["survivor"].emails] == ["mariana.gomez@example.net"]
        assert "Mariana Gomez" in admin_page.content.decode()

    def test_a_search_never_finds_a_masked_member(self) -> None:
        self.login(self.sydney_manager)
        assert self.ids(self.client.get("/clusters/", {"q": "Mariana Gomez"})) == []
        assert self.ids(self.client.get("/clusters/", {"q": "0455 123 987"})) == []
        assert self.ids(self.client.get("/clusters/", {"q": "maria garcia"})) == [self.sydney_cluster.pk, self.cross.pk]
        self.login(self.burleigh_manager)
        assert self.ids(self.client.get("/clusters/", {"q": "Mariana Gomez"})) == [self.cross.pk]
