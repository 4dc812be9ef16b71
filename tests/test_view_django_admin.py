"""The Django admin is for admins (staff, from `create_user --role admin`); audit events are read-only there."""

from __future__ import annotations

from dedup import audit
from tests.dashboard_base import DashboardTestCase


class DjangoAdminTestCase(DashboardTestCase):
    def test_the_admin_opens_the_admin_and_reads_audit_events(self) -> None:
        event = audit.record("test.event")
        self.login(self.admin)
        assert self.client.get("/admin/").status_code == 200
        assert self.client.get("/admin/dedup/auditevent/").status_code == 200
        change = self.client.get(f"/admin/dedup/auditevent/{event.pk}/change/")
        assert change.status_code == 200 and b'name="_save"' not in change.content
        assert self.client.post(f"/admin/dedup/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403

    def test_managers_and_auditors_are_not_let_in(self) -> None:
        for user in (self.sydney_manager, self.auditor):
            self.login(user)
            response = self.client.get("/admin/")
            assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
