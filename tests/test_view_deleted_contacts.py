"""Soft-deleted contacts: searchable, showing what each was merged into, scoped to the viewer's locations."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from dedup.models import Contact
from tests.dashboard_base import DashboardTestCase


class DeletedContactsTestCase(DashboardTestCase):
    merged: Contact
    burleigh_deleted: Contact
    primary_uid: str

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        primary = cls.sydney_cluster.suggested_primary_uid
        cls.merged = Contact.objects.filter(location=cls.sydney).exclude(uid=primary).order_by("uid")[0]
        Contact.objects.filter(pk=cls.merged.pk).update(deleted_at=timezone.now(), merged_into_uid=primary)
        cls.burleigh_deleted = Contact.objects.filter(location=cls.burleigh)[0]
        Contact.objects.filter(pk=cls.burleigh_deleted.pk).update(deleted_at=timezone.now())
        cls.primary_uid = primary

    def uids(self, response: Any) -> list[str]:
        return [row["contact"].uid for row in response.context["rows"]]

    def test_the_sydney_manager_sees_sydneys_deleted_contacts_and_what_they_were_merged_into(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get("/contacts/deleted/")
        assert response.status_code == 200
        assert self.uids(response) == [self.merged.uid]
        assert response.context["rows"][0]["primary"].uid == self.primary_uid
        assert self.primary_uid.encode() in response.content
        # Managers do not restore: no button.
        assert b"Restore" not in bytes(response.content).split(b"<main")[1]

    def test_the_burleigh_manager_does_not_see_sydneys(self) -> None:
        self.login(self.burleigh_manager)
        assert self.uids(self.client.get("/contacts/deleted/")) == [self.burleigh_deleted.uid]

    def test_search_by_uid_name_phone_or_the_primary(self) -> None:
        self.login(self.admin)
        assert self.uids(self.client.get("/contacts/deleted/", {"q": self.merged.uid})) == [self.merged.uid]
        assert self.uids(self.client.get("/contacts/deleted/", {"q": self.primary_uid})) == [self.merged.uid]
        assert self.uids(self.client.get("/contacts/deleted/", {"q": "maria"})) == [self.merged.uid]
        # The same number is on a Burleigh Heads contact too (another customer of another location).
        assert set(self.uids(self.client.get("/contacts/deleted/", {"q": "0412 345 678"}))) == {
            self.merged.uid, self.burleigh_deleted.uid
        }
        assert self.uids(self.client.get("/contacts/deleted/", {"q": "nobody at all"})) == []

    def test_admins_get_a_restore_button(self) -> None:
        self.login(self.admin)
        response = self.client.get("/contacts/deleted/")
        assert f"/contacts/{self.merged.uid}/restore/".encode() in response.content

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.get("/contacts/deleted/"), "/contacts/deleted/")
