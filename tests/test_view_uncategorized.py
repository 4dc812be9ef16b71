"""Uncategorized phones: the reason and the region hint, scoped to the viewer's locations."""

from __future__ import annotations

from typing import Any

from dedup.models import Contact, UncategorizedPhone
from tests.dashboard_base import POPUP, SYDNEY, DashboardTestCase, ensure_locations, index_contacts, person


class UncategorizedTestCase(DashboardTestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        sydney_contact = Contact.objects.filter(location=cls.sydney)[0]
        burleigh_contact = Contact.objects.filter(location=cls.burleigh)[0]
        UncategorizedPhone.objects.create(contact=sydney_contact, location=cls.sydney, raw="0412 34", code="ERR_DEDUP_002",
                                          reason="too short to be a number in AU", region="AU")
        UncategorizedPhone.objects.create(contact=burleigh_contact, location=cls.burleigh, raw="call me",
                                          code="ERR_DEDUP_001", reason="no digits", region="AU")

    def raws(self, response: Any) -> list[str]:
        return [p.raw for p in response.context["page"]]

    def test_the_sydney_manager_sees_sydneys_phones_with_the_reason_and_hint(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get("/uncategorized/")
        assert response.status_code == 200
        assert self.raws(response) == ["0412 34"]
        body = response.content.decode()
        assert "too short to be a number in AU" in body
        assert "Is this a number from another country?" in body

    def test_the_burleigh_manager_does_not_see_sydneys(self) -> None:
        self.login(self.burleigh_manager)
        assert self.raws(self.client.get("/uncategorized/")) == ["call me"]

    def test_filter_by_reason_and_location(self) -> None:
        self.login(self.auditor)
        assert len(self.raws(self.client.get("/uncategorized/"))) == 2
        assert self.raws(self.client.get("/uncategorized/", {"code": "ERR_DEDUP_001"})) == ["call me"]
        assert self.raws(self.client.get("/uncategorized/", {"location": SYDNEY})) == ["0412 34"]

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.get("/uncategorized/"), "/uncategorized/")

    def test_post_is_not_allowed(self) -> None:
        self.login(self.sydney_manager)
        assert self.client.post("/uncategorized/").status_code == 405


class SeveralLocationsUncategorizedTestCase(DashboardTestCase):
    """v4: a contact of several locations, and a location Podium gives no country (the pop-up van)."""

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        ensure_locations(POPUP)
        index_contacts([
            person("ct_7200001_aaaaaa", [POPUP, SYDNEY], "Ivy Ng", phones=["0412 34"]),
        ])  # fmt: skip

    def test_a_contact_of_several_locations_is_listed_for_each(self) -> None:
        phone = UncategorizedPhone.objects.get(contact__uid="ct_7200001_aaaaaa")
        assert phone.location.uid == POPUP  # parsed with its home's region
        self.login(self.sydney_manager)
        assert "0412 34" in [p.raw for p in self.client.get("/uncategorized/").context["page"]]
        self.login(self.burleigh_manager)
        assert "0412 34" not in [p.raw for p in self.client.get("/uncategorized/").context["page"]]

    def test_a_location_without_a_country_is_said_to_need_a_region(self) -> None:
        self.login(self.admin)
        body = self.client.get("/uncategorized/").content.decode()
        assert "Podium gives Pop-up Van no country" in body and "an admin can set this location" in body
