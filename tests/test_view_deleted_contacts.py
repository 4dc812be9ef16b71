"""Deleted contacts: those a merge retired (with what each was merged into, by which merge, and its re-creation)
and those gone from Podium; searchable; scoped to the viewer's locations; Restore for admins where possible."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from dedup.models import Contact, MergeOperation, RestoreRecord
from tests.dashboard_base import DashboardTestCase, make_operation


class DeletedContactsTestCase(DashboardTestCase):
    merged: Contact
    recreated: Contact
    burleigh_deleted: Contact
    primary_uid: str
    operation: MergeOperation

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        # The Sydney cluster was merged through the published API: both duplicates deleted, snapshots kept.
        cls.operation = make_operation(cls.sydney_cluster, MergeOperation.PATCHED, finished_at=timezone.now())
        duplicates = sorted(cls.operation.duplicate_uids)
        cls.operation.steps = {"retired": {uid: "deleted" for uid in duplicates}}
        cls.operation.save()
        cls.primary_uid = cls.operation.primary_uid
        Contact.objects.filter(uid__in=duplicates).update(deleted_at=timezone.now(), merged_into_uid=cls.primary_uid)
        cls.merged, cls.recreated = (Contact.objects.get(uid=uid) for uid in duplicates)
        # One of them an admin already re-created from its snapshot.
        RestoreRecord.objects.create(
            contact_uid=cls.recreated.uid, merged_into_uid=cls.primary_uid, operation=cls.operation,
            method=RestoreRecord.RECREATED, new_uid="d3adb33f-0000-4000-8000-000000000001",
            not_restored=[{"field": "phone", "value": "+61••••••678",
                           "reason": "it opted out of transactional messages, which Podium's published API cannot set"}],
            restored_by=cls.admin,
        )  # fmt: skip
        # A Burleigh Heads contact that left Podium without a merge of ours (a full scan no longer listed it).
        cls.burleigh_deleted = Contact.objects.filter(location=cls.burleigh).order_by("uid")[0]
        Contact.objects.filter(pk=cls.burleigh_deleted.pk).update(deleted_at=timezone.now())

    def uids(self, response: Any) -> list[str]:
        return sorted(row.contact.uid for row in response.context["rows"])

    def row(self, response: Any, uid: str) -> Any:
        return next(row for row in response.context["rows"] if row.contact.uid == uid)

    def test_the_sydney_manager_sees_sydneys_retired_contacts_and_what_they_were_merged_into(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get("/contacts/deleted/")
        assert response.status_code == 200
        assert self.uids(response) == [self.merged.uid, self.recreated.uid]
        row = self.row(response, self.merged.uid)
        assert row.primary.uid == self.primary_uid and row.operation == self.operation and row.restorable
        body = response.content.decode()
        assert self.primary_uid in body and f"/history/{self.operation.pk}/" in body
        # Managers do not restore: no button, only that an admin can.
        main = body.split("<main")[1]
        assert "Restore…" not in main and "restorable by an admin" in main

    def test_a_recreated_contact_shows_its_new_uid_and_what_was_not_restored(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get("/contacts/deleted/")
        row = self.row(response, self.recreated.uid)
        assert row.recreated.new_uid == "d3adb33f-0000-4000-8000-000000000001" and not row.restorable
        body = response.content.decode()
        assert "Re-created as <span class=\"mono\">d3adb33f-0000-4000-8000-000000000001</span>" in body
        assert "Not restored:" in body and "+61••••••678" in body
        assert "opted out of transactional messages" in body

    def test_the_burleigh_manager_does_not_see_sydneys(self) -> None:
        self.login(self.burleigh_manager)
        response = self.client.get("/contacts/deleted/")
        assert self.uids(response) == [self.burleigh_deleted.uid]
        assert not self.row(response, self.burleigh_deleted.uid).restorable
        assert "there is no snapshot to restore it from" in response.content.decode()

    def test_search_by_uid_name_phone_the_primary_or_the_new_uid(self) -> None:
        self.login(self.admin)
        both = sorted([self.merged.uid, self.recreated.uid])
        assert self.uids(self.client.get("/contacts/deleted/", {"q": self.merged.uid})) == [self.merged.uid]
        assert self.uids(self.client.get("/contacts/deleted/", {"q": self.primary_uid})) == both
        assert self.uids(self.client.get("/contacts/deleted/", {"q": "maria"})) == both
        new_uid = "d3adb33f-0000-4000-8000-000000000001"
        assert self.uids(self.client.get("/contacts/deleted/", {"q": new_uid})) == [self.recreated.uid]
        # The same number is on a Burleigh Heads contact too (another customer of another location).
        assert self.uids(self.client.get("/contacts/deleted/", {"q": "0412 345 678"})) == sorted(
            [*both, self.burleigh_deleted.uid]
        )
        assert self.uids(self.client.get("/contacts/deleted/", {"q": "nobody at all"})) == []

    def test_admins_get_a_restore_button_only_where_a_restore_can_work(self) -> None:
        self.login(self.admin)
        body = self.client.get("/contacts/deleted/").content.decode()
        assert f"/contacts/{self.merged.uid}/restore/" in body
        assert f"/contacts/{self.recreated.uid}/restore/" not in body  # re-created already
        assert f"/contacts/{self.burleigh_deleted.uid}/restore/" not in body  # no snapshot

    def test_the_list_costs_the_same_queries_for_a_bigger_page(self) -> None:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        self.login(self.admin)
        self.client.get("/contacts/deleted/")
        with CaptureQueriesContext(connection) as few:
            self.client.get("/contacts/deleted/")
        Contact.objects.filter(location=self.burleigh).update(deleted_at=timezone.now())
        with CaptureQueriesContext(connection) as more:
            response = self.client.get("/contacts/deleted/")
        assert len(response.context["rows"]) == 5
        assert len(more.captured_queries) == len(few.captured_queries)

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.get("/contacts/deleted/"), "/contacts/deleted/")
