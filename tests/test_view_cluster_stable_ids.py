"""Item 16 of issue 12: a cluster is addressed by its stable ``cl_…`` id everywhere a person sees one."""

from __future__ import annotations

import re

from dedup import audit
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

_NUMERIC_CLUSTER_LINK = re.compile(r'href="/clusters/\d+/')


class StableClusterIdTestCase(DashboardTestCase):
    household: Cluster
    cross: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.household = build_cluster(household(SYDNEY, "ct_200"))
        cls.cross = build_cluster([same_person(SYDNEY, "ct_500")[0], same_person(BURLEIGH, "ct_510")[1]])

    def test_the_page_answers_at_the_id_the_cli_exports_and_audit_show(self) -> None:
        self.login(self.sydney_manager)
        for cluster in (self.sydney_cluster, self.household, self.cross):
            assert cluster.cluster_id.startswith(("cl_", "clx_"))
            response = self.client.get(f"/clusters/{cluster.cluster_id}/")
            assert response.status_code == 200, cluster.cluster_id
            assert response.context["cluster"].pk == cluster.pk

    def test_an_old_numeric_link_redirects_to_the_stable_address(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get(f"/clusters/{self.household.pk}/", {"kind": "review"})
        assert response.status_code == 302
        assert response["Location"] == f"/clusters/{self.household.cluster_id}/?kind=review"

    def test_a_numeric_link_to_someone_elses_cluster_is_404_without_revealing_its_id(self) -> None:
        self.login(self.burleigh_manager)
        response = self.client.get(f"/clusters/{self.sydney_cluster.pk}/")
        assert response.status_code == 404
        assert self.sydney_cluster.cluster_id.encode() not in response.content
        assert self.client.get(f"/clusters/{self.sydney_cluster.cluster_id}/").status_code == 404

    def test_unknown_and_malformed_ids_are_404(self) -> None:
        self.login(self.admin)
        assert self.client.get("/clusters/cl_0000000000000000/").status_code == 404
        assert self.client.get("/clusters/clx_ffff/").status_code == 404
        assert self.client.get("/clusters/abc/").status_code == 404
        assert self.client.get("/clusters/999999/").status_code == 404

    def test_actions_take_the_stable_id_and_still_the_numeric_one(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.post(f"/clusters/{self.household.pk}/reject/", {"note": "two people"})
        assert response.status_code == 302
        self.household.refresh_from_db()
        assert self.household.status == Cluster.REJECTED
        self.login(self.auditor)
        assert self.client.post(f"/clusters/{self.sydney_cluster.cluster_id}/approve/").status_code == 403

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.get(f"/clusters/{self.household.cluster_id}/"), "/")

    def test_a_superseded_cluster_leads_to_its_successor(self) -> None:
        middle = build_cluster(household(SYDNEY, "ct_210"), status=Cluster.SUPERSEDED)
        latest = build_cluster(household(SYDNEY, "ct_220"))
        Cluster.objects.filter(pk=self.household.pk).update(status=Cluster.SUPERSEDED, superseded_by=middle)
        Cluster.objects.filter(pk=middle.pk).update(superseded_by=latest)
        self.login(self.sydney_manager)
        response = self.client.get(f"/clusters/{self.household.cluster_id}/")
        assert response.status_code == 200
        body = response.content.decode()
        assert "This cluster was superseded" in body
        # The chain is followed to the cluster that holds the contacts now.
        assert f'href="/clusters/{latest.cluster_id}/"' in body
        assert response.context["successor"].pk == latest.pk

    def test_a_successor_the_viewer_cannot_see_is_not_named(self) -> None:
        elsewhere = build_cluster(same_person(BURLEIGH, "ct_900", name="Jack Smith"))
        Cluster.objects.filter(pk=self.cross.pk).update(status=Cluster.SUPERSEDED, superseded_by=elsewhere)
        self.login(self.sydney_manager)
        response = self.client.get(f"/clusters/{self.cross.cluster_id}/")
        assert response.status_code == 200
        assert "This cluster was superseded" in response.content.decode()
        assert response.context["successor"] is None
        assert elsewhere.cluster_id not in response.content.decode()

    def test_every_link_the_product_renders_uses_the_stable_id(self) -> None:
        op = make_operation(self.sydney_cluster, MergeOperation.PATCHED)
        audit.record("cluster.viewed", cluster_ref=self.household.cluster_id, location_uids=[SYDNEY])
        self.login(self.admin)
        pages = {
            "queue": "/clusters/",
            "history": "/history/",
            "merge": f"/history/{op.pk}/",
            "audit": "/audit/",
            "bulk confirm": f"/clusters/approve-selected/?clusters={self.sydney_cluster.pk}",
        }
        for label, path in pages.items():
            body = self.client.get(path).content.decode()
            assert not _NUMERIC_CLUSTER_LINK.search(body), label
        assert f'href="/clusters/{self.household.cluster_id}/' in self.client.get("/audit/").content.decode()
        assert f'href="/clusters/{self.sydney_cluster.cluster_id}/"' in self.client.get(f"/history/{op.pk}/").content.decode()
        assert f'href="/clusters/{self.sydney_cluster.cluster_id}/' in self.client.get("/clusters/").content.decode()
