"""Restoring a merged duplicate (admins): a confirmation page first, then POST; opt-outs stay on; audited."""

from __future__ import annotations

from dedup.consent import violations
from dedup.merge import approve_cluster
from dedup.merge.readback import channel_consent
from dedup.models import AuditEvent, MergeOperation, RestoreRecord, ReviewDecision
from dedup.survivorship import MergePlan
from podium_client import Contact as PodiumContact
from tests.dashboard_base import SYDNEY, DashboardTestCase, PodiumMixin, same_person


class RestoreContactTestCase(PodiumMixin, DashboardTestCase):
    podium_contacts = same_person(SYDNEY, "ct_100")

    def merge(self) -> str:
        op = approve_cluster(self.sydney_cluster, user=self.sydney_manager, run_async=False)
        assert op.state == MergeOperation.PATCHED
        return sorted(op.duplicate_uids)[0]

    def test_the_admin_confirms_then_restores_as_different_people(self) -> None:
        uid = self.merge()
        self.login(self.admin)
        confirm = self.client.get(f"/contacts/{uid}/restore/")
        assert confirm.status_code == 200
        assert b"Confirm: restore this contact" in confirm.content
        assert not RestoreRecord.objects.exists()  # the GET only asks
        response = self.client.post(f"/contacts/{uid}/restore/", {"different_people": "on", "note": "twins"},
                                    follow=True)
        record = RestoreRecord.objects.get(contact_uid=uid)
        body = response.content.decode()
        # The published API cannot un-delete: the contact is re-created from the merge's snapshot, with a new uid.
        assert record.method == RestoreRecord.RECREATED and record.new_uid and record.new_uid != uid
        assert f"Re-created {uid} as {record.new_uid}." in body
        recreated = self.emulator.state.get(record.new_uid)
        assert recreated["name"] == "Maria Garcia" and "Birthday March" in {t["label"] for t in recreated["tags"]}
        # Its phone opted out of texts on the survivor: the published API cannot set that, so it is left off
        # (and said so), and the contact keeps at least the consent the merge computed.
        assert {x["field"] for x in record.not_restored} == {"phone"}
        assert "opted out of transactional messages" in body
        plan = MergePlan.from_dict(MergeOperation.objects.get().plan)
        assert violations(plan.consent, channel_consent(PodiumContact.from_wire(recreated), "AU")) == []
        assert record.marked_different_people and record.restored_by == self.admin
        assert ReviewDecision.objects.filter(decision=ReviewDecision.DIFFERENT_PEOPLE).exists()
        assert AuditEvent.objects.filter(event_type="contact.restored", actor="user:admin").exists()

    def test_a_contact_that_is_not_deleted_has_nothing_to_restore(self) -> None:
        self.login(self.admin)
        uid = self.sydney_cluster.suggested_primary_uid
        response = self.client.post(f"/contacts/{uid}/restore/", follow=True)
        assert "is not deleted; there is nothing to restore" in response.content.decode()

    def test_the_sydney_manager_gets_403(self) -> None:
        uid = self.merge()
        self.login(self.sydney_manager)
        assert self.client.get(f"/contacts/{uid}/restore/").status_code == 403
        assert self.client.post(f"/contacts/{uid}/restore/").status_code == 403

    def test_the_burleigh_manager_gets_404(self) -> None:
        uid = self.merge()
        self.login(self.burleigh_manager)
        assert self.client.post(f"/contacts/{uid}/restore/").status_code == 404

    def test_the_auditor_gets_403(self) -> None:
        uid = self.merge()
        self.login(self.auditor)
        assert self.client.post(f"/contacts/{uid}/restore/").status_code == 403
        assert not RestoreRecord.objects.exists()

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.post("/contacts/ct_1000002_bbbbbb/restore/"), "/")

    def test_a_post_without_csrf_is_refused(self) -> None:
        uid = self.merge()
        assert self.csrf_client(self.admin).post(f"/contacts/{uid}/restore/").status_code == 403
        assert not RestoreRecord.objects.exists()
