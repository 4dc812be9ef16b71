"""The access rules, decided in one place (dedup.access): who sees which locations and clusters."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest
from django.test import RequestFactory

from dedup import access
from dedup.models import Cluster, Contact, Location
from tests.dashboard_base import (
    AUCKLAND,
    BURLEIGH,
    SYDNEY,
    DashboardTestCase,
    build_cluster,
    ensure_locations,
    household,
    make_user,
    person,
    same_person,
)


class AccessTestCase(DashboardTestCase):
    cross: Cluster
    auckland: Location
    sydney_auditor: User
    both_manager: User
    nobody: User

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.cross = build_cluster(
            [same_person(SYDNEY, "ct_400")[0], same_person(BURLEIGH, "ct_410")[1]]
        )
        (cls.auckland,) = ensure_locations(AUCKLAND)
        cls.sydney_auditor = make_user("sydney_auditor", "auditor", [cls.sydney])
        cls.both_manager = make_user("both_manager", "manager", [cls.sydney, cls.burleigh])
        cls.nobody = make_user_without_role()

    def request_for(self, user: User) -> HttpRequest:
        request = RequestFactory().get("/")
        request.user = user
        return request

    def test_the_cross_location_cluster_is_cross(self) -> None:
        assert self.cross.kind == Cluster.CROSS
        assert self.cross.location is None
        assert set(self.cross.locations.values_list("uid", flat=True)) == {SYDNEY, BURLEIGH}

    def test_admins_see_every_location(self) -> None:
        assert access.visible_location_ids(self.admin) is None
        assert set(access.visible_locations(self.admin)) == {self.sydney, self.burleigh, self.auckland}

    def test_managers_see_only_their_locations(self) -> None:
        assert access.visible_location_ids(self.sydney_manager) == {self.sydney.pk}
        assert list(access.clusters_visible_to(self.sydney_manager).exclude(pk=self.cross.pk)) == [self.sydney_cluster]

    def test_an_auditor_without_grants_reads_every_location(self) -> None:
        assert access.visible_location_ids(self.auditor) is None

    def test_an_auditor_with_grants_reads_only_those(self) -> None:
        assert access.visible_location_ids(self.sydney_auditor) == {self.sydney.pk}

    def test_a_user_without_a_role_sees_nothing(self) -> None:
        assert access.role_of(self.nobody) is None
        assert access.visible_location_ids(self.nobody) == frozenset()
        with pytest.raises(PermissionDenied):
            access.get_cluster_for_user(self.request_for(self.nobody), self.sydney_cluster.pk)

    def test_a_cross_location_cluster_is_visible_with_any_of_its_locations(self) -> None:
        for user in (self.sydney_manager, self.burleigh_manager, self.both_manager, self.admin, self.auditor):
            assert self.cross in access.clusters_visible_to(user), user
            assert access.get_cluster_for_user(self.request_for(user), self.cross.pk) == self.cross

    def test_a_cross_location_cluster_is_actionable_only_with_all_of_them(self) -> None:
        with pytest.raises(PermissionDenied):
            access.get_cluster_for_user(self.request_for(self.sydney_manager), self.cross.pk, write=True)
        assert access.get_cluster_for_user(self.request_for(self.both_manager), self.cross.pk, write=True)
        assert access.get_cluster_for_user(self.request_for(self.admin), self.cross.pk, write=True)

    def test_another_locations_cluster_is_not_found(self) -> None:
        with pytest.raises(Http404):
            access.get_cluster_for_user(self.request_for(self.burleigh_manager), self.sydney_cluster.pk)
        with pytest.raises(Http404):
            access.get_cluster_for_user(self.request_for(self.burleigh_manager), self.sydney_cluster.pk, write=True)

    def test_read_only_people_may_read_but_not_write(self) -> None:
        request = self.request_for(self.auditor)
        assert access.get_cluster_for_user(request, self.sydney_cluster.pk) == self.sydney_cluster
        with pytest.raises(PermissionDenied):
            access.get_cluster_for_user(request, self.sydney_cluster.pk, write=True)

    def test_only_admins_restore_contacts(self) -> None:
        uid = self.sydney_cluster.members.all()[0].contact.uid
        with pytest.raises(PermissionDenied):
            access.get_contact_for_user(self.request_for(self.sydney_manager), uid, write=True)
        with pytest.raises(Http404):
            access.get_contact_for_user(self.request_for(self.burleigh_manager), uid, write=True)
        assert access.get_contact_for_user(self.request_for(self.admin), uid, write=True).uid == uid

    def test_audit_events_are_filtered_by_the_locations_they_name(self) -> None:
        from dedup import audit

        audit.record("test.sydney", location_uids=[SYDNEY])
        audit.record("test.burleigh", location_uids=[BURLEIGH])
        audit.record("test.global")
        seen = set(access.audit_events_visible_to(self.sydney_manager).values_list("event_type", flat=True))
        assert "test.sydney" in seen and "test.burleigh" not in seen and "test.global" not in seen
        everything = set(access.audit_events_visible_to(self.auditor).values_list("event_type", flat=True))
        assert {"test.sydney", "test.burleigh", "test.global"} <= everything

    def test_scans_are_filtered_by_scope(self) -> None:
        from dedup.models import ScanRun

        ScanRun.objects.create(scope=[], scope_key="all", state=ScanRun.SUCCEEDED)
        ScanRun.objects.create(scope=[SYDNEY], scope_key=f"loc:{SYDNEY}", state=ScanRun.SUCCEEDED)
        ScanRun.objects.create(scope=[BURLEIGH], scope_key=f"loc:{BURLEIGH}", state=ScanRun.SUCCEEDED)
        scopes = [s.scope for s in access.scans_visible_to(self.sydney_manager)]
        assert sorted(map(tuple, scopes)) == [(), (SYDNEY,)]
        assert access.scan_scope_for(self.sydney_manager) == [SYDNEY]
        assert access.scan_scope_for(self.admin) is None

    def test_the_fast_count_equals_the_visible_clusters(self) -> None:
        build_cluster(household(SYDNEY, "ct_600"))
        build_cluster([same_person(SYDNEY, "ct_610")[0], same_person(BURLEIGH, "ct_620")[1]])
        bases = [
            Cluster.objects.all(),
            Cluster.objects.filter(kind=Cluster.REVIEW),
            Cluster.objects.filter(kind=Cluster.CROSS),
            Cluster.objects.filter(access.clusters_touching_q([self.burleigh.pk])),
        ]
        for user in (self.admin, self.auditor, self.sydney_manager, self.burleigh_manager, self.both_manager,
                     self.sydney_auditor, self.nobody):
            for base in bases:
                expected = access.restrict_clusters(user, base).count()
                assert access.count_visible_clusters(user, base) == expected, (user, base.query)


def make_user_without_role() -> User:
    return User.objects.create_user("nobody", password="x-irrelevant-password")


class SeveralLocationsTestCase(DashboardTestCase):
    """A Podium contact may belong to several locations: it is the customer of each of them."""

    auckland: Location
    auckland_manager: User
    shared: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        (cls.auckland,) = ensure_locations(AUCKLAND)
        cls.auckland_manager = make_user("auckland_manager", "manager", [cls.auckland])
        # One contact whose home is Auckland and that also belongs to Sydney, one of Sydney only: both are
        # Sydney's customers, so it is a within-location cluster of Sydney (as detection files it).
        cls.shared = build_cluster([
            person("ct_7100001_aaaaaa", [AUCKLAND, SYDNEY], "Ana Lima", phones=["+61 415 010 203"]),
            person("ct_7100002_bbbbbb", SYDNEY, "Ana Lima", phones=["0415 010 203"]),
        ])  # fmt: skip

    def member(self, uid: str) -> Contact:
        return Contact.objects.get(uid=uid)

    def test_the_cluster_is_sydneys(self) -> None:
        assert self.shared.location == self.sydney and not self.shared.cross_location
        assert set(self.shared.locations.values_list("uid", flat=True)) == {SYDNEY, AUCKLAND}

    def test_the_sydney_manager_reads_every_member_in_full_and_decides_it(self) -> None:
        away = self.member("ct_7100001_aaaaaa")
        assert away.location == self.auckland
        assert not access.masks_contact(self.sydney_manager, away)
        assert access.masks_location(self.sydney_manager, away.location_id)  # by its home alone it would be
        assert access.can_act_on_cluster(self.sydney_manager, self.shared)
        decidable, readable = access.split_by_decidable(self.sydney_manager, Cluster.objects.filter(pk=self.shared.pk))
        assert list(decidable) == [self.shared] and not readable.exists()

    def test_the_auckland_manager_reads_their_customer_but_the_cluster_is_sydneys(self) -> None:
        assert not access.masks_contact(self.auckland_manager, self.member("ct_7100001_aaaaaa"))
        assert access.masks_contact(self.auckland_manager, self.member("ct_7100002_bbbbbb"))
        assert self.shared not in access.clusters_visible_to(self.auckland_manager)
        assert not access.can_see_cluster(self.auckland_manager, self.shared)
        assert not access.can_act_on_cluster(self.auckland_manager, self.shared)
        auckland_auditor = make_user("auckland_auditor", "auditor", [self.auckland])
        for user in (self.auckland_manager, auckland_auditor, self.sydney_manager, self.burleigh_manager):
            visible = access.restrict_clusters(user, Cluster.objects.all())
            assert access.count_visible_clusters(user, Cluster.objects.all()) == visible.count(), user
            assert sum(access.count_split(user, Cluster.objects.all())) == visible.count(), user

    def test_the_pages_follow_the_same_rule(self) -> None:
        self.login(self.sydney_manager)
        page = self.client.get(f"/clusters/{self.shared.cluster_id}/")
        body = page.content.decode()
        assert page.context["masked_count"] == 0 and "•••" not in body
        assert "Approve merge…" in body and "Auckland, Sydney CBD" in body
        assert [r.cluster.pk for r in self.client.get("/clusters/", {"q": "ana lima"}).context["rows"]] == [
            self.shared.pk
        ]
        self.login(self.auckland_manager)
        assert self.client.get(f"/clusters/{self.shared.cluster_id}/").status_code == 404
        assert self.client.get("/clusters/").context["rows"] == []

    def test_in_a_cross_location_cluster_a_member_is_read_through_any_of_its_locations(self) -> None:
        cross = build_cluster([
            person("ct_7300001_aaaaaa", [BURLEIGH, AUCKLAND], "Tom Lee", phones=["+61 416 111 222"]),
            person("ct_7300002_bbbbbb", SYDNEY, "Tom Lee", phones=["0416 111 222"]),
        ])  # fmt: skip
        assert cross.kind == Cluster.CROSS
        self.login(self.auckland_manager)
        response = self.client.get(f"/clusters/{cross.cluster_id}/")
        assert response.status_code == 200 and response.context["masked_count"] == 1
        body = response.content.decode()
        assert "+61 416 111 222" in body  # its home is Burleigh Heads, but it is Auckland's customer too
        assert "0416 111 222" not in body and "041• ••• •22" in body
        rows = {r.cluster.pk: r for r in self.client.get("/clusters/").context["rows"]}
        assert rows[cross.pk].names == "Tom Lee · T••• L•••" and not rows[cross.pk].decidable
