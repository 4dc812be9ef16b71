"""The review page: members side by side with differences marked, each pair's score, the surviving record."""

from __future__ import annotations

import html
from typing import Any

from dedup.models import Cluster
from tests.dashboard_base import BURLEIGH, SYDNEY, DashboardTestCase, build_cluster, household, same_person


class ClusterDetailTestCase(DashboardTestCase):
    household: Cluster
    cross: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.household = build_cluster(household(SYDNEY, "ct_200"))
        cls.cross = build_cluster([same_person(SYDNEY, "ct_500")[0], same_person(BURLEIGH, "ct_510")[1]])

    def get(self, cluster: Cluster) -> Any:
        return self.client.get(f"/clusters/{cluster.cluster_id}/")

    def test_the_sydney_manager_reviews_a_sydney_cluster(self) -> None:
        self.login(self.sydney_manager)
        response = self.get(self.sydney_cluster)
        assert response.status_code == 200
        ctx = response.context
        # The survivor comes first and is the rule's choice (no reviewer picked one).
        assert ctx["members"][0].uid == self.sydney_cluster.suggested_primary_uid
        assert ctx["preview"].plan.chosen_by == "rule"
        rows = {row.label: row for row in ctx["rows"]}
        assert rows["Phones"].differs is False  # three spellings of one number are the same number
        assert rows["Marketing opt-out"].differs is True
        assert rows["Name"].differs is False
        assert len(ctx["pairs"]) == 3 and all(p.score == 1.0 for p in ctx["pairs"])
        body = response.content.decode()
        assert "share a phone number" in body and "+0.60" in body
        assert "Marketing: opted out" in body and "SMS: opted out" in body
        assert "Approve merge…" in body and "Reject: different people…" in body
        # An auto cluster keeps the rule's primary.
        assert "Change the primary…" not in body

    def test_the_opt_out_union_is_previewed_on_the_survivor(self) -> None:
        self.login(self.sydney_manager)
        preview = self.get(self.sydney_cluster).context["preview"]
        assert preview.plan.opt_outs.marketing and preview.plan.opt_outs.sms and not preview.plan.opt_outs.email
        assert set(preview.tags) == {"VIP", "Birthday March"}
        assert preview.address == "1 George St, Sydney"

    def test_members_show_podiums_v4_data_side_by_side(self) -> None:
        self.login(self.sydney_manager)
        response = self.get(self.sydney_cluster)
        rows = {row.label: row for row in response.context["rows"]}
        primary, marketing_out, plain = rows["Consent per channel"].values
        # Consent per channel, in words, with location names.
        assert "+61 412 345 678 — marketing: opted in at Sydney CBD; transactional opt-out (no texts at all)" in primary
        assert "0412 345 678 — marketing: opted out (not opted in anywhere)" in marketing_out
        assert "maria@example.com — marketing: opted in at Sydney CBD" in plain
        assert rows["Consent per channel"].differs
        assert rows["Locations"].values == [["Sydney CBD"]] * 3 and not rows["Locations"].differs
        assert rows["Conversations"].values == [["1"]] * 3
        assert rows["Attributes"].values[0] == ["Birthday: 03-14"] and rows["Attributes"].differs
        assert rows["Address"].values[0] == ["1 George St, Sydney"]
        body = response.content.decode()
        assert "Consent per channel" in body and "transactional opt-out" in body

    def test_the_preview_says_how_it_merges_and_what_the_survivor_is_held_to(self) -> None:
        self.login(self.sydney_manager)
        response = self.get(self.sydney_cluster)
        preview = response.context["preview"]
        assert preview.strategy == "consolidate"
        survivor = preview.survivor
        assert survivor.tags == [("VIP", False), ("Birthday March", True)]
        assert survivor.locations == [("Sydney CBD", False)]
        assert survivor.conversations == 3 and survivor.conversations_moved == 2
        assert survivor.consent == [
            "phone +61412345678 (3 members): no marketing anywhere — withdrawn on the survivor with Podium's "
            "campaigns opt-out; transactional opt-out",
            "email maria@example.com (3 members): marketing at most at Sydney CBD",
        ]
        body = html.unescape(response.content.decode())
        assert "Through Podium's published API" in body and "their 2 conversations are moved to it" in body
        assert "Only then is each duplicate deleted in Podium" in body
        assert not preview.losses and 'name="accept_losses"' not in body

    def test_a_household_shows_its_conflict_and_may_change_primary(self) -> None:
        self.login(self.sydney_manager)
        body = self.get(self.household).content.decode()
        assert "different names: a household or a reassigned number" in body
        assert "conflict" in body
        assert "Change the primary…" in body

    def test_the_burleigh_manager_gets_404(self) -> None:
        self.login(self.burleigh_manager)
        assert self.get(self.sydney_cluster).status_code == 404

    def test_a_cross_location_cluster_is_visible_but_not_actionable_with_one_location(self) -> None:
        self.login(self.burleigh_manager)
        response = self.get(self.cross)
        assert response.status_code == 200
        body = response.content.decode()
        assert "Approve merge…" not in body
        assert "touches a location you are not granted" in body

    def test_the_auditor_reads_without_actions(self) -> None:
        self.login(self.auditor)
        body = self.get(self.sydney_cluster).content.decode()
        assert "Approve merge…" not in body and "You can read this cluster but not decide it" in body

    def test_an_unknown_cluster_is_404(self) -> None:
        self.login(self.admin)
        assert self.client.get("/clusters/999999/").status_code == 404

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.get(self.sydney_cluster), "/clusters/")

    def test_on_a_tenant_with_podiums_merge_the_preview_says_so(self) -> None:
        self.login(self.sydney_manager)
        with self.settings(PODIUM_CAPABILITIES=["merge", "restore"]):
            response = self.get(self.sydney_cluster)
        preview = response.context["preview"]
        assert preview.strategy == "native"
        body = html.unescape(response.content.decode())
        assert "Podium's merge (this tenant has the merge capability) folds the duplicates into the primary" in body
        assert "Only then is each duplicate deleted" not in body
