"""Setting the region of a location Podium gives no country: admins only, audited, then re-parsed."""

from __future__ import annotations

from typing import Any

from dedup.models import AuditEvent, Location, ScanRun
from tests.location_pages_base import POPUP, LocationPagesTestCase


class LocationRegionTestCase(LocationPagesTestCase):
    def url(self, location: Location) -> str:
        return f"/locations/{location.pk}/region/"

    def test_an_admin_sees_the_form(self) -> None:
        self.login(self.admin)
        response = self.client.get(self.url(self.popup))
        assert response.status_code == 200
        body = response.content.decode()
        assert "Podium gives no country for this location" in body and "deployment default, AU" in body
        assert '<option value="NZ">New Zealand (NZ)</option>' in body

    def test_an_admin_sets_it_audited_and_a_re_parse_is_queued(self) -> None:
        self.login(self.admin)
        with self.captureOnCommitCallbacks(execute=False) as callbacks:
            response = self.client.post(self.url(self.popup), {"region": "NZ"}, follow=True)
        assert response.redirect_chain == [("/locations/", 302)]
        self.popup.refresh_from_db()
        assert (self.popup.country, self.popup.region_source, self.popup.needs_region) == ("NZ", "admin", False)
        event = AuditEvent.objects.get(event_type="location.region_set")
        assert event.actor == "user:admin" and event.payload["after"]["region"] == "NZ"
        run = ScanRun.objects.get()
        assert (run.kind, run.scope, run.state, run.requested_by) == (ScanRun.REPARSE, [POPUP], ScanRun.QUEUED, self.admin)
        assert len(callbacks) == 1  # the background task is enqueued when the transaction commits
        messages = [str(m) for m in response.context["messages"]]
        assert any("now parses phone numbers as NZ" in m for m in messages)
        assert any(f"scan #{run.pk}" in m for m in messages)

    def test_a_running_scan_of_the_location_re_parses_it_instead(self) -> None:
        holder = ScanRun.objects.create(scope_key="all", state=ScanRun.RUNNING, holder="system:schedule")
        self.login(self.admin)
        response = self.client.post(self.url(self.popup), {"region": "NZ"}, follow=True)
        assert ScanRun.objects.count() == 1 and Location.objects.get(pk=self.popup.pk).country == "NZ"
        messages = [str(m) for m in response.context["messages"]]
        assert any(f"Scan #{holder.pk} is running" in m and "when it finishes" in m for m in messages)

    def test_an_invalid_region_is_a_form_error(self) -> None:
        self.login(self.admin)
        for value in ("ZZ", "", "nz; DROP TABLE", "\x00"):
            response = self.client.post(self.url(self.popup), {"region": value})
            assert response.status_code == 400, value
            assert response.context["form"].errors
        assert Location.objects.get(pk=self.popup.pk).region_override == "" and not AuditEvent.objects.exists()

    def test_podiums_country_is_not_overridden(self) -> None:
        self.login(self.admin)
        body = self.client.get(self.url(self.sydney)).content.decode()
        assert "Podium gives this location the country <strong>AU</strong>" in body and "<form" not in body.split("<main")[1]
        response = self.client.post(self.url(self.sydney), {"region": "NZ"})
        assert response.status_code == 409
        assert Location.objects.get(pk=self.sydney.pk).country == "AU" and not AuditEvent.objects.exists()

    def test_a_manager_gets_403_on_their_location_and_404_on_another(self) -> None:
        self.login(self.sydney_manager)
        assert self.client.get(self.url(self.sydney)).status_code == 403
        assert self.client.post(self.url(self.sydney), {"region": "NZ"}).status_code == 403
        assert self.client.get(self.url(self.popup)).status_code == 404
        assert self.client.post(self.url(self.popup), {"region": "NZ"}).status_code == 404
        assert self.client.get("/locations/999999/region/").status_code == 404
        assert Location.objects.get(pk=self.popup.pk).region_override == ""

    def test_the_auditor_gets_403(self) -> None:
        self.login(self.auditor)
        assert self.client.get(self.url(self.popup)).status_code == 403
        assert self.client.post(self.url(self.popup), {"region": "NZ"}).status_code == 403

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.get(self.url(self.popup)))
        self.assert_login_redirect(self.client.post(self.url(self.popup), {"region": "NZ"}))

    def test_a_post_without_csrf_is_refused(self) -> None:
        response: Any = self.csrf_client(self.admin).post(self.url(self.popup), {"region": "NZ"})
        assert response.status_code == 403 and Location.objects.get(pk=self.popup.pk).region_override == ""
