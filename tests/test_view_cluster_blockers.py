"""A cluster whose merge the published API cannot carry onto the rule's primary: the page says why, does not
offer approving, suggests a member that could be the primary without blockers, and choosing it merges."""

from __future__ import annotations

from typing import Any

from dedup.models import AuditEvent, Cluster, MergeOperation
from tests.dashboard_base import SYDNEY, DashboardTestCase, PodiumMixin, build_cluster, flags_of, person


def texts_opted_out_on_a_duplicate(prefix: str = "ct_450") -> list[dict[str, Any]]:
    """The richest record (the rule's primary) may be texted; a duplicate holding the same number opted out
    of texts (a transactional opt-out), which Podium's published API cannot set on another contact."""
    return [
        person(f"{prefix}0001_aaaaaa", SYDNEY, "Noah Williams", phones=["+61 413 222 333"],
               emails=["noah@example.com"], address="5 Pitt St, Sydney", attributes=[("Member since", "2019")]),
        person(f"{prefix}0002_bbbbbb", SYDNEY, "Noah Williams", phones=["0413 222 333"],
               transactional_opt_out="PHONE"),
    ]  # fmt: skip


class BlockedClusterTestCase(PodiumMixin, DashboardTestCase):
    podium_contacts = texts_opted_out_on_a_duplicate()
    blocked: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.blocked = build_cluster(texts_opted_out_on_a_duplicate())

    def page(self) -> Any:
        return self.client.get(f"/clusters/{self.blocked.cluster_id}/")

    def test_the_page_names_the_blocker_hides_approve_and_suggests_another_primary(self) -> None:
        assert self.blocked.kind == Cluster.AUTO  # scoring cannot see consent: only the plan can
        self.login(self.sydney_manager)
        response = self.page()
        preview = response.context["preview"]
        assert preview.plan.primary_uid == "ct_4500001_aaaaaa" and preview.blockers
        assert [a.uid for a in preview.alternatives] == ["ct_4500002_bbbbbb"]
        body = response.content.decode()
        assert "Why this cannot be merged onto ct_4500001_aaaaaa" in body
        assert "opted out of transactional messages" in body
        assert "Approving is not offered" in body and "Approve merge…" not in body
        assert "could be the primary without these blockers" in body
        # The rule's primary being blocked, the automatic cluster may take another one.
        assert "Change the primary…" in body

    def test_approving_anyway_is_refused_with_the_reason(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.post(f"/clusters/{self.blocked.cluster_id}/approve/", follow=True)
        assert "cannot be merged onto ct_4500001_aaaaaa" in response.content.decode()
        assert not MergeOperation.objects.exists()

    def test_choosing_the_suggested_primary_sends_it_to_review_and_it_merges(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.post(
            f"/clusters/{self.blocked.cluster_id}/primary/", {"primary_uid": "ct_4500002_bbbbbb"}, follow=True
        )
        assert "Primary changed" in response.content.decode()
        self.blocked.refresh_from_db()
        assert self.blocked.kind == Cluster.REVIEW and not self.blocked.auto_merge
        assert "cannot_carry" in self.blocked.reasons and self.blocked.chosen_primary_uid == "ct_4500002_bbbbbb"
        event = AuditEvent.objects.get(event_type="cluster.primary_changed")
        assert event.payload["sentToReview"] == "cannot_carry"
        preview = response.context["preview"]
        assert not preview.blockers and preview.plan.chosen_by == "person"
        assert "Approve merge…" in response.content.decode()

        with self.captureOnCommitCallbacks(execute=True):
            self.client.post(f"/clusters/{self.blocked.cluster_id}/approve/")
        op = MergeOperation.objects.get(cluster=self.blocked)
        assert op.state == MergeOperation.PATCHED, (op.state, op.last_error)
        survivor = self.emulator.state.get("ct_4500002_bbbbbb")
        assert flags_of(survivor)["smsOptOut"]  # the opt-out stays: the survivor is the one that had it
        assert survivor["address"]["addressLine1"] == "5 Pitt St, Sydney"  # carried from the other record
        assert {d["uid"] for d in self.emulator.state.deleted()} == {"ct_4500001_aaaaaa"}

    def test_an_unblocked_auto_cluster_still_keeps_the_rules_primary(self) -> None:
        self.login(self.sydney_manager)
        uid = sorted(self.sydney_cluster.members.values_list("contact__uid", flat=True))[-1]
        response = self.client.post(f"/clusters/{self.sydney_cluster.cluster_id}/primary/", {"primary_uid": uid},
                                    follow=True)
        assert "only review clusters can change it" in response.content.decode()
        self.sydney_cluster.refresh_from_db()
        assert self.sydney_cluster.kind == Cluster.AUTO and self.sydney_cluster.chosen_primary_uid == ""

    def test_members_the_published_api_cannot_reach_block_every_primary(self) -> None:
        unreachable = build_cluster([
            person("ct_4700001_aaaaaa", SYDNEY, "Ava Patel", phones=["+61 417 333 444"], conversations=0,
                   address="3 King St, Sydney"),
            person("ct_4700002_bbbbbb", SYDNEY, "Ava Patel", phones=["0417 333 444"], conversations=0),
        ])  # fmt: skip
        self.login(self.sydney_manager)
        response = self.client.get(f"/clusters/{unreachable.cluster_id}/")
        preview = response.context["preview"]
        assert len(preview.blockers) == 2 and preview.alternatives == []
        body = response.content.decode()
        assert "cannot reach it without risking another contact" in body
        assert "No member could be the primary without a blocker" in body and "Approve merge…" not in body
