"""The audit log: filters, location scoping, CSV/NDJSON export (streamed, formula-safe), chain status."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

from django.core.cache import cache
from django.http import StreamingHttpResponse
from django.test import Client
from django.utils import timezone

from dedup import audit
from dedup.models import AuditEvent
from dedup.spreadsheet import neutralize_cell
from tests.dashboard_base import BURLEIGH, SYDNEY, DashboardTestCase


class AuditViewTestCase(DashboardTestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        audit.record("merge.patched", actor="user:sydney_manager", actor_user_id=cls.sydney_manager.pk,
                     location_uids=[SYDNEY], contact_uids=["ct_1000001_aaaaaa"], natural_keys=["+61412345678"],
                     payload={"optOuts": {"marketingOptOut": True}})
        audit.record("cluster.rejected", actor="user:burleigh_manager", actor_user_id=cls.burleigh_manager.pk,
                     location_uids=[BURLEIGH], contact_uids=["ct_3000001_aaaaaa"], payload={"note": "=HYPERLINK(1)"})
        audit.record("policy.changed", actor="user:admin", payload={"changes": {}})

    def setUp(self) -> None:
        cache.clear()

    def types(self, response: Any) -> list[str]:
        return [e.event_type for e in response.context["page"]]

    def test_the_sydney_manager_sees_only_sydneys_events(self) -> None:
        self.login(self.sydney_manager)
        response = self.client.get("/audit/")
        assert response.status_code == 200
        assert self.types(response) == ["merge.patched"]

    def test_the_auditor_sees_every_event(self) -> None:
        self.login(self.auditor)
        assert self.types(self.client.get("/audit/")) == ["policy.changed", "cluster.rejected", "merge.patched"]

    def test_filter_by_user_type_location_and_date(self) -> None:
        self.login(self.auditor)
        assert self.types(self.client.get("/audit/", {"user": "burleigh_manager"})) == ["cluster.rejected"]
        assert self.types(self.client.get("/audit/", {"event_type": "policy.changed"})) == ["policy.changed"]
        assert self.types(self.client.get("/audit/", {"location": SYDNEY})) == ["merge.patched"]
        today = timezone.localdate()
        day = today.isoformat()
        assert len(self.types(self.client.get("/audit/", {"date_from": day, "date_to": day}))) == 3
        assert self.types(self.client.get("/audit/", {"date_to": (today - timedelta(days=1)).isoformat()})) == []

    def test_a_date_out_of_range_is_a_form_error_not_a_500(self) -> None:
        self.login(self.auditor)
        for value in ("9999-12-31", "0001-01-01", "31/12/9999"):
            response = self.client.get("/audit/", {"date_to": value, "user": "burleigh_manager"})
            assert response.status_code == 200, value
            assert "Enter a date between 01 Jan 1900 and 31 Dec 2999." in response.content.decode()
            # The valid filters still apply.
            assert self.types(response) == ["cluster.rejected"]

    def test_an_export_with_an_invalid_filter_is_refused_with_the_reason(self) -> None:
        self.login(self.auditor)
        for fmt in ("csv", "ndjson"):
            response = self.client.get("/audit/", {"date_to": "9999-12-31", "format": fmt})
            assert response.status_code == 400
            assert "No export was made" in response.content.decode() and "To: Enter a date" in response.content.decode()
        assert not AuditEvent.objects.filter(event_type="audit.exported").exists()

    def test_an_export_records_the_filters_it_applied(self) -> None:
        self.login(self.auditor)
        streamed(self.client.get("/audit/", {"location": SYDNEY, "date_from": "2025-01-01", "format": "csv",
                                             "page": "3", "junk": "x"}))
        event = AuditEvent.objects.get(event_type="audit.exported")
        assert event.payload["filters"] == {"location": SYDNEY, "date_from": "2025-01-01"}

    def test_filter_by_contact_uid_or_a_phone_as_typed(self) -> None:
        self.login(self.auditor)
        assert self.types(self.client.get("/audit/", {"subject": "ct_3000001_aaaaaa"})) == ["cluster.rejected"]
        for typed in ("0412 345 678", "+61 412 345 678", "(04) 1234-5678"):
            assert self.types(self.client.get("/audit/", {"subject": typed})) == ["merge.patched"], typed
        # A partial uid matches nothing rather than everything.
        assert self.types(self.client.get("/audit/", {"subject": "ct_"})) == []

    def test_csv_export_of_the_filtered_set_neutralizes_formulas(self) -> None:
        self.login(self.auditor)
        response = self.client.get("/audit/", {"user": "burleigh_manager", "format": "csv"})
        assert response.status_code == 200
        assert response.streaming
        assert response["Content-Type"].startswith("text/csv")
        assert "attachment;" in response["Content-Disposition"]
        rows = list(csv.reader(io.StringIO(streamed(response))))
        assert rows[0][:3] == ["id", "created_at", "event_type"]
        assert len(rows) == 2 and rows[1][2] == "cluster.rejected"
        # The payload cell is JSON starting with "{", not a formula; the note inside is inert text.
        assert rows[1][8].startswith("{")
        assert AuditEvent.objects.filter(event_type="audit.exported").count() == 1

    def test_the_csv_export_neutralizes_formulas_behind_blanks(self) -> None:
        for actor in (" =HYPERLINK(1)", "\t=1+1", "\n@SUM(A1)", "\u00a0-2", "\u200b+1"):
            audit.record("test.padded", actor=actor)
        self.login(self.auditor)
        response = self.client.get("/audit/", {"event_type": "test.padded", "format": "csv"})
        rows = list(csv.reader(io.StringIO(streamed(response))))
        assert [row[3] for row in rows[1:]] == [
            "' =HYPERLINK(1)", "'\t=1+1", "'\n@SUM(A1)", "'\u00a0-2", "'\u200b+1"
        ]

    def test_ndjson_export(self) -> None:
        self.login(self.auditor)
        response = self.client.get("/audit/", {"format": "ndjson"})
        lines = streamed(response).splitlines()
        events = [json.loads(line) for line in lines]
        assert [e["event_type"] for e in events] == ["merge.patched", "cluster.rejected", "policy.changed"]
        assert events[0]["subjects"] == ["+61412345678", "ct_1000001_aaaaaa"]

    def test_formula_cells_are_neutralized(self) -> None:
        for dangerous in ("=1+1", "+61412345678", "-2", "@SUM(A1)", "\tx", "\rx"):
            assert neutralize_cell(dangerous) == "'" + dangerous
        assert neutralize_cell("merge.patched") == "merge.patched"

    def test_managers_may_read_but_not_export(self) -> None:
        self.login(self.sydney_manager)
        assert self.client.get("/audit/", {"format": "csv"}).status_code == 403
        assert b"Export CSV" not in self.client.get("/audit/").content

    def test_an_unknown_format_is_a_clear_400(self) -> None:
        self.login(self.auditor)
        response = self.client.get("/audit/", {"format": "xlsx"})
        assert response.status_code == 400

    def test_the_chain_status_is_shown_and_a_broken_chain_is_named(self) -> None:
        self.login(self.auditor)
        response = self.client.get("/audit/chain/")
        assert b"audit chain intact: 3 events verified" in response.content
        cache.clear()
        from django.db import connection

        if connection.vendor == "sqlite":  # PostgreSQL's trigger refuses the tampering outright
            with connection.cursor() as cursor:
                cursor.execute("UPDATE dedup_auditevent SET actor = 'user:mallory' WHERE event_type = 'merge.patched'")
            assert b"audit chain BROKEN" in self.client.get("/audit/chain/").content

    def test_an_emptied_log_is_shown_broken_not_intact(self) -> None:
        from django.db import connection

        self.login(self.auditor)
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET session_replication_role = replica")
            cursor.execute("DELETE FROM dedup_auditevent")
            if connection.vendor == "postgresql":
                cursor.execute("SET session_replication_role = DEFAULT")
        body = self.client.get("/audit/chain/").content.decode()
        assert "audit chain BROKEN: the log is empty" in body and "intact" not in body

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.get("/audit/"), "/audit/")
        self.assert_login_redirect(Client().get("/audit/?format=csv"), "/audit/")

    def test_the_audit_page_refuses_post(self) -> None:
        self.login(self.auditor)
        assert self.client.post("/audit/").status_code == 405


def streamed(response: Any) -> str:
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response).decode()
