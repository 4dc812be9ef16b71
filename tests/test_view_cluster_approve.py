"""Approving a cluster (POST /clusters/<id>/approve/): the merge runs against the emulator; refusals are clear."""

from __future__ import annotations

from dedup.models import Cluster, MergeOperation
from tests.dashboard_base import SYDNEY, DashboardTestCase, PodiumMixin, flags_of, same_person


class ApproveClusterTestCase(PodiumMixin, DashboardTestCase):
    podium_contacts = same_person(SYDNEY, "ct_100")

    def approve(self, cluster: Cluster | None = None) -> object:
        cluster = cluster or self.sydney_cluster
        with self.captureOnCommitCallbacks(execute=True):
            return self.client.post(f"/clusters/{cluster.cluster_id}/approve/")

    def test_the_sydney_manager_approves_and_the_merge_completes(self) -> None:
        self.login(self.sydney_manager)
        response = self.approve()
        op = MergeOperation.objects.get(cluster=self.sydney_cluster)
        assert response["Location"].startswith(f"/history/{op.pk}/")  # type: ignore[index]
        assert op.state == MergeOperation.PATCHED
        assert op.requested_by == self.sydney_manager
        # The published API only: consolidated onto the primary, which now carries every member's data and
        # the strictest consent (marketing withdrawn from the shared phone, the SMS opt-out kept) ...
        assert op.strategy == MergeOperation.CONSOLIDATE and op.request_count > 0
        primary = self.emulator.state.get(op.primary_uid)
        assert flags_of(primary) == {"marketingOptOut": True, "smsOptOut": True, "emailOptOut": False}
        assert {t["label"] for t in primary["tags"]} == {"VIP", "Birthday March"}
        conversations = {c for contact in self.podium_contacts for c in (x["uid"] for x in contact["conversations"])}
        assert {c["uid"] for c in primary["conversations"]} == conversations
        # ... and the duplicates are gone from Podium (deleted, their snapshots kept with the merge).
        assert {d["uid"] for d in self.emulator.state.deleted()} == set(op.duplicate_uids)
        assert set(op.member_snapshot) == {op.primary_uid, *op.duplicate_uids}
        self.sydney_cluster.refresh_from_db()
        assert self.sydney_cluster.status == Cluster.MERGED
        # The view answered before the worker ran (the merge runs after the commit), so it said so;
        # the merge page it redirected to shows where the merge ended.
        page = self.client.get(f"/history/{op.pk}/").content.decode()
        assert "Merge approved. The merge is running" in page
        assert '<span class="badge ok" id="op-state">Patched</span>' in page
        # The merge page says how it merged, what it sent and what became of the duplicates.
        assert "Consolidate (published API)" in page and f'id="request-count">{op.request_count} ' in page
        assert "attach tag Birthday March" in page and "campaigns opt-out of +61" in page
        assert page.count("deleted in Podium by this merge (snapshot kept)") == 2

    def test_when_someone_acted_first_the_second_person_is_told_who(self) -> None:
        self.login(self.sydney_manager)
        self.approve()
        self.login(self.admin)  # an admin looking at the same cluster a moment later
        response = self.client.post(f"/clusters/{self.sydney_cluster.cluster_id}/approve/", follow=True)
        assert response.status_code == 200
        messages = [str(m) for m in response.context["messages"]]
        assert messages[-1].startswith(f"Cluster {self.sydney_cluster.cluster_id} was already merged by sydney_manager")
        assert MergeOperation.objects.filter(cluster=self.sydney_cluster).count() == 1

    def test_the_burleigh_manager_gets_404(self) -> None:
        self.login(self.burleigh_manager)
        assert self.client.post(f"/clusters/{self.sydney_cluster.cluster_id}/approve/").status_code == 404
        assert not MergeOperation.objects.exists()

    def test_the_auditor_gets_403(self) -> None:
        self.login(self.auditor)
        assert self.client.post(f"/clusters/{self.sydney_cluster.cluster_id}/approve/").status_code == 403
        assert not MergeOperation.objects.exists()

    def test_get_is_not_allowed(self) -> None:
        self.login(self.sydney_manager)
        assert self.client.get(f"/clusters/{self.sydney_cluster.cluster_id}/approve/").status_code == 405

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.post(f"/clusters/{self.sydney_cluster.cluster_id}/approve/"), "/")
        assert not MergeOperation.objects.exists()

    def test_a_post_without_csrf_is_refused(self) -> None:
        response = self.csrf_client(self.sydney_manager).post(f"/clusters/{self.sydney_cluster.cluster_id}/approve/")
        assert response.status_code == 403
        assert not MergeOperation.objects.exists()
