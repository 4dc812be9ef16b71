"""The dashboard tells admins, prominently, which locations need a region; nobody else sees it."""

from __future__ import annotations

from dedup.models import Location
from tests.location_pages_base import LocationPagesTestCase


class RegionBannerTestCase(LocationPagesTestCase):
    def test_admins_see_the_locations_that_need_a_region_on_the_dashboard(self) -> None:
        self.login(self.admin)
        body = self.client.get("/").content.decode()
        assert 'class="attention"' in body and "1 location needs a region" in body
        assert f'href="/locations/{self.popup.pk}/region/"' in body and "Pop-up Van" in body
        assert "read as <strong>AU</strong> (the deployment default)" in body

    def test_it_goes_once_every_location_has_a_region(self) -> None:
        Location.objects.filter(pk=self.popup.pk).update(region_override="NZ", country="NZ")
        self.login(self.admin)
        assert "needs a region" not in self.client.get("/").content.decode()

    def test_managers_and_auditors_do_not_see_it(self) -> None:
        for user in (self.sydney_manager, self.auditor):
            self.login(user)
            response = self.client.get("/")
            assert response.status_code == 200 and "needs a region" not in response.content.decode()
