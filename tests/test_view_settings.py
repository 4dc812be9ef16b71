"""The policy page: everyone reads it, admins change it (validated, audited with before and after)."""

from __future__ import annotations

from typing import Any

from django_q.models import Schedule

from dedup.models import AuditEvent, Policy
from dedup.schedule import SCAN_SCHEDULE_NAME
from tests.dashboard_base import DashboardTestCase

VALID = {
    "default_region": "NZ",
    "auto_merge_threshold": "0.85",
    "cross_location_auto_merge": "",
    "email_secondary_key": "on",
    "scan_interval_minutes": "60",
    "rate_limit_per_minute": "300",
}


class SettingsTestCase(DashboardTestCase):
    def post(self, **overrides: Any) -> Any:
        return self.client.post("/settings/", {**VALID, **overrides})

    def test_the_admin_changes_the_policy_and_the_change_is_audited(self) -> None:
        self.login(self.admin)
        response = self.post()
        assert response.status_code == 302
        policy = Policy.current()
        assert policy.default_region == "NZ" and str(policy.auto_merge_threshold) == "0.85"
        assert policy.email_secondary_key is True
        event = AuditEvent.objects.get(event_type="policy.changed")
        assert event.actor == "user:admin"
        assert event.payload["changes"]["auto_merge_threshold"] == {"before": "0.80", "after": "0.85"}
        assert event.payload["changes"]["default_region"] == {"before": "AU", "after": "NZ"}
        assert "cross_location_auto_merge" not in event.payload["changes"]
        # The periodic scan now follows the new interval.
        assert Schedule.objects.get(name=SCAN_SCHEDULE_NAME).minutes == 60

    def test_saving_without_a_change_records_nothing(self) -> None:
        self.login(self.admin)
        policy = Policy.current()
        self.post(default_region=policy.default_region, auto_merge_threshold="0.80", email_secondary_key="",
                  scan_interval_minutes=str(policy.scan_interval_minutes))
        assert not AuditEvent.objects.filter(event_type="policy.changed").exists()

    def test_invalid_values_are_explained_and_nothing_changes(self) -> None:
        self.login(self.admin)
        response = self.post(default_region="XX", auto_merge_threshold="0.5", scan_interval_minutes="1")
        assert response.status_code == 400
        body = response.content.decode()
        assert "is not a region phone numbers can be read in" in body
        assert "The threshold must be between 0.60" in body
        assert "Scans cannot run more often than every 5 minutes" in body
        assert Policy.current().default_region == "AU"
        assert not AuditEvent.objects.filter(event_type="policy.changed").exists()

    def test_the_sydney_manager_reads_but_cannot_change(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get("/settings/")
        assert response.status_code == 200
        assert b"Only admins change the policy" in response.content
        assert self.post().status_code == 403
        assert Policy.current().default_region == "AU"

    def test_the_auditor_gets_403_on_post(self) -> None:
        self.login(self.auditor)
        assert self.post().status_code == 403

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.get("/settings/"), "/settings/")
        self.assert_login_redirect(self.post(), "/settings/")

    def test_a_post_without_csrf_is_refused(self) -> None:
        response = self.csrf_client(self.admin).post("/settings/", VALID)
        assert response.status_code == 403
        assert Policy.current().default_region == "AU"
