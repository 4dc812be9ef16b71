"""Item 15 of issue 12: searching Deleted contacts and the queue ignores accents and case ("Garcia" finds
"GARCÍA"), on SQLite and PostgreSQL alike (matched on the index's normalized name, not a collation)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from dedup.models import Cluster, Contact
from tests.dashboard_base import SYDNEY, DashboardTestCase, build_cluster, same_person


class AccentInsensitiveSearchTestCase(DashboardTestCase):
    garcia: Cluster
    nunez: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.garcia = build_cluster(same_person(SYDNEY, "ct_400", name="GARCÍA, José"))
        cls.nunez = build_cluster(same_person(SYDNEY, "ct_410", name="Zoë Núñez-Peña"))
        for cluster in (cls.garcia, cls.nunez):
            member = Contact.objects.filter(memberships__cluster=cluster).order_by("uid")[0]
            Contact.objects.filter(pk=member.pk).update(deleted_at=timezone.now())

    def queue(self, q: str) -> set[int]:
        response = self.client.get("/clusters/", {"q": q})
        assert response.status_code == 200
        return {row.cluster.pk for row in response.context["rows"]}

    def deleted(self, q: str) -> set[str]:
        response = self.client.get("/contacts/deleted/", {"q": q})
        assert response.status_code == 200
        return {row.contact.name for row in response.context["rows"]}

    def test_the_queue_finds_accented_names_from_plain_letters_and_back(self) -> None:
        self.login(self.sydney_manager)
        for q in ("Garcia", "garcia", "GARCÍA", "garcía", "garc"):
            assert self.queue(q) == {self.garcia.pk, self.sydney_cluster.pk}, q  # "GARCÍA, José", "Maria Garcia"
        for q in ("jose garcia", "Garcia, Jose", "JOSÉ", "Jose"):
            assert self.queue(q) == {self.garcia.pk}, q
        for q in ("nunez", "NUNEZ PENA", "zoe", "Zoë", "pena nunez"):
            assert self.queue(q) == {self.nunez.pk}, q
        assert self.queue("maria") == {self.sydney_cluster.pk}
        assert self.queue("garcia maria") == {self.sydney_cluster.pk}
        assert self.queue("jose maria") == set()  # every word must match one member

    def test_the_queue_finds_a_cluster_by_its_id_a_member_uid_or_a_phone(self) -> None:
        self.login(self.sydney_manager)
        assert self.queue(self.garcia.cluster_id) == {self.garcia.pk}
        assert self.queue("ct_4000002_bbbbbb") == {self.garcia.pk}
        assert self.queue("0412 345 678") == {self.sydney_cluster.pk, self.garcia.pk, self.nunez.pk}

    def test_deleted_contacts_find_accented_names(self) -> None:
        self.login(self.sydney_manager)
        assert self.deleted("Garcia") == {"GARCÍA, José"}
        assert self.deleted("jose") == {"GARCÍA, José"}
        assert self.deleted("NUNEZ") == {"Zoë Núñez-Peña"}
        assert self.deleted("zoë núñez") == {"Zoë Núñez-Peña"}
        assert self.deleted("garcia zoe") == set()

    def test_a_query_that_is_only_a_title_still_searches_the_name_as_typed(self) -> None:
        Contact.objects.filter(name="Zoë Núñez-Peña", deleted_at__isnull=False).update(name="Mrs Zoë Núñez-Peña")
        self.login(self.sydney_manager)
        assert self.deleted("Mrs") == {"Mrs Zoë Núñez-Peña"}

    def test_the_search_is_kept_in_the_queue_links(self) -> None:
        self.login(self.sydney_manager)
        response: Any = self.client.get("/clusters/", {"q": "García"})
        assert response.context["rows"][0].url.endswith("?q=Garc%C3%ADa&status=open")
