"""A merge that cannot carry everything: the review page names each loss, approving needs "I accept these
losses" ticked for exactly the losses shown, and the merge records and shows what was accepted."""

from __future__ import annotations

from typing import Any

from dedup.merge.planning import member_records, plan_for
from dedup.models import AuditEvent, Cluster, MergeOperation
from dedup.views.presenting import losses_digest
from tests.dashboard_base import SYDNEY, DashboardTestCase, PodiumMixin, build_cluster, person


def two_addresses(prefix: str = "ct_460") -> list[dict[str, Any]]:
    """One customer typed twice, each record with its own address and mobile: Podium keeps one of each."""
    return [
        person(f"{prefix}0001_aaaaaa", SYDNEY, "Olivia Brown", phones=["+61 414 555 666"],
               emails=["olivia@example.com"], address="8 Elizabeth St, Sydney", tags=["loyalty"]),
        person(f"{prefix}0002_bbbbbb", SYDNEY, "Olivia Brown", phones=["0414 555 666", "0499 888 777"],
               address="2 James St, Sydney"),
    ]  # fmt: skip


class LossesTestCase(PodiumMixin, DashboardTestCase):
    podium_contacts = two_addresses()
    lossy: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.lossy = build_cluster(two_addresses())

    def url(self, action: str = "") -> str:
        return f"/clusters/{self.lossy.cluster_id}/{action + '/' if action else ''}"

    def approve(self, **data: str) -> Any:
        with self.captureOnCommitCallbacks(execute=True):
            return self.client.post(self.url("approve"), data, follow=True)

    def test_the_page_lists_each_loss_and_requires_the_box(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get(self.url())
        preview = response.context["preview"]
        # The first record holds more (an email, a tag): it survives, and keeps its own address and mobile.
        assert preview.plan.primary_uid == "ct_4600001_aaaaaa"
        assert {(loss["field"], loss["value"], loss["fromUid"]) for loss in preview.losses} == {
            ("address", "2 James St, Sydney", "ct_4600002_bbbbbb"), ("phone", "0499 888 777", "ct_4600002_bbbbbb")
        }
        body = response.content.decode()
        assert "What this merge cannot carry" in body
        assert 'name="accept_losses" value="1" required' in body and "I accept these losses" in body
        assert f'name="losses_seen" value="{preview.losses_digest}"' in body

    def test_approving_without_accepting_is_refused_and_nothing_starts(self) -> None:
        self.login(self.sydney_manager)
        response = self.approve()
        assert "tick “I accept these losses”" in response.content.decode()
        assert not MergeOperation.objects.exists()
        self.lossy.refresh_from_db()
        assert self.lossy.status == Cluster.OPEN

    def test_accepting_losses_the_page_did_not_show_is_refused(self) -> None:
        self.login(self.sydney_manager)
        response = self.approve(accept_losses="1", losses_seen="0000000000000000")
        assert "changed since the page was shown" in response.content.decode()
        assert not MergeOperation.objects.exists()

    def test_accepting_the_losses_shown_merges_and_records_them(self) -> None:
        self.login(self.sydney_manager)
        digest = self.client.get(self.url()).context["preview"].losses_digest
        response = self.approve(accept_losses="1", losses_seen=digest)
        op = MergeOperation.objects.get(cluster=self.lossy)
        assert op.state == MergeOperation.PATCHED, (op.state, op.last_error)
        plan = plan_for(self.lossy, member_records(self.lossy))
        assert losses_digest(plan.losses) == digest
        assert op.accepted_losses == [loss.to_dict() for loss in plan.losses] and len(op.accepted_losses) == 2
        planned = AuditEvent.objects.get(event_type="merge.planned", operation_ref=op.pk)
        assert planned.payload["acceptedLosses"] == op.accepted_losses
        body = response.content.decode()
        assert "Losses accepted" in body and "Approved by sydney_manager, accepting" in body
        for loss in op.accepted_losses:
            assert loss["value"] in body

    def test_the_auditor_gets_403(self) -> None:
        self.login(self.auditor)
        assert self.client.post(self.url("approve"), {"accept_losses": "1"}).status_code == 403
        assert not MergeOperation.objects.exists()
