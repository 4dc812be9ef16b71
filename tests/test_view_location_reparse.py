"""'Re-parse now' for a location whose contacts were read with another region: admins only, POST only."""

from __future__ import annotations

from typing import Any

from dedup.models import Location, ScanRun
from tests.location_pages_base import POPUP, LocationPagesTestCase


class LocationReparseTestCase(LocationPagesTestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        Location.objects.filter(pk=cls.popup.pk).update(region_override="NZ", country="NZ")  # parsed as AU

    def url(self, location: Location) -> str:
        return f"/locations/{location.pk}/reparse/"

    def test_an_admin_starts_a_re_parse(self) -> None:
        self.login(self.admin)
        response = self.client.post(self.url(self.popup), follow=True)
        assert response.redirect_chain == [("/locations/", 302)]
        run = ScanRun.objects.get()
        assert (run.kind, run.scope, run.requested_by) == (ScanRun.REPARSE, [POPUP], self.admin)
        assert any(f"scan #{run.pk}" in str(m) for m in response.context["messages"])

    def test_a_second_one_while_the_first_is_queued_names_it(self) -> None:
        self.login(self.admin)
        self.client.post(self.url(self.popup))
        first = ScanRun.objects.get()
        response = self.client.post(self.url(self.popup), follow=True)
        assert ScanRun.objects.count() == 1
        assert any(f"Scan #{first.pk} is queued" in str(m) for m in response.context["messages"])

    def test_get_is_not_allowed(self) -> None:
        self.login(self.admin)
        assert self.client.get(self.url(self.popup)).status_code == 405

    def test_managers_and_auditors_may_not(self) -> None:
        self.login(self.sydney_manager)
        assert self.client.post(self.url(self.sydney)).status_code == 403
        assert self.client.post(self.url(self.popup)).status_code == 404
        self.login(self.auditor)
        assert self.client.post(self.url(self.popup)).status_code == 403
        assert not ScanRun.objects.exists()

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.post(self.url(self.popup)))

    def test_a_post_without_csrf_is_refused(self) -> None:
        response: Any = self.csrf_client(self.admin).post(self.url(self.popup))
        assert response.status_code == 403 and not ScanRun.objects.exists()
