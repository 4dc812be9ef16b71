"""The Locations page: each location's region and where it comes from; admins see what needs a region first."""

from __future__ import annotations

from dedup.models import Location, ScanRun
from tests.index_helpers import contact, index
from tests.location_pages_base import PODIUM_LOCATIONS, POPUP, SYDNEY, LocationPagesTestCase

URL = "/locations/"


class LocationListTestCase(LocationPagesTestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        index(
            contact("ct_1", locations=(SYDNEY,), phones=("0412 345 678",)),
            contact("ct_2", locations=(POPUP,), phones=("021 123 4567",)),
            contact("ct_3", locations=(POPUP, SYDNEY), phones=("021 123 4568",)),
            locations=PODIUM_LOCATIONS,
        )

    def rows(self) -> list[tuple[str, str, str, int]]:
        response = self.client.get(URL)
        assert response.status_code == 200
        return [(r["location"].uid, r["location"].country, r["location"].region_source, r["contacts"])
                for r in response.context["rows"]]  # fmt: skip

    def test_an_admin_sees_every_location_the_ones_needing_a_region_first(self) -> None:
        self.login(self.admin)
        assert self.rows() == [
            (POPUP, "AU", "default", 2), ("loc_burleigh", "AU", "podium", 0), (SYDNEY, "AU", "podium", 1),
        ]  # fmt: skip
        body = self.client.get(URL).content.decode()
        assert "1 location needs a region" in body and "needs a region" in body
        assert f'href="/locations/{self.popup.pk}/region/"' in body and ">Set region<" in body
        # Podium's own country is not the admin's to change.
        assert f'href="/locations/{self.sydney.pk}/region/"' not in body

    def test_a_pending_re_parse_is_shown_with_a_button_and_a_running_one_with_its_scan(self) -> None:
        Location.objects.filter(pk=self.popup.pk).update(region_override="NZ", country="NZ")
        self.login(self.admin)
        body = self.client.get(URL).content.decode()
        assert "re-parse pending" in body and "read as AU" in body
        assert f'action="/locations/{self.popup.pk}/reparse/"' in body and ">Change region<" in body
        run = ScanRun.objects.create(scope=[POPUP], scope_key=f"locations:{POPUP}", kind=ScanRun.REPARSE)
        body = self.client.get(URL).content.decode()
        assert f'href="/scans/{run.pk}/"' in body and "re-parses with NZ at its end" in body
        assert f'action="/locations/{self.popup.pk}/reparse/"' not in body

    def test_a_manager_sees_their_locations_read_only(self) -> None:
        self.login(self.sydney_manager)
        assert self.rows() == [(SYDNEY, "AU", "podium", 1)]
        body = self.client.get(URL).content.decode()
        assert "/region/" not in body and "/reparse/" not in body and "needs a region" not in body

    def test_the_auditor_reads_every_location_without_actions(self) -> None:
        self.login(self.auditor)
        assert [uid for uid, *_ in self.rows()] == [POPUP, "loc_burleigh", SYDNEY]
        body = self.client.get(URL).content.decode()
        assert "/region/" not in body and "/reparse/" not in body

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.get(URL))

    def test_the_navigation_links_it(self) -> None:
        self.login(self.sydney_manager)
        assert 'href="/locations/" aria-current="page"' in self.client.get(URL).content.decode()
