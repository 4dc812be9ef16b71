"""Every filter of every list page, and every export, answers a hostile value with a form error, never a 500.

The parameters are read from each page's own filter form, so a filter added later is walked too.
"""

from __future__ import annotations

from typing import Any

from django.http import StreamingHttpResponse
from django.test import Client
from django.urls import reverse

from dedup import audit
from tests.dashboard_base import SYDNEY, DashboardTestCase

HOSTILE = [
    # dates out of Python's or the database's range, impossible, or in another format
    "9999-12-31", "0001-01-01", "0000-00-00", "2025-02-30", "31/12/9999",
    # numbers past 64 bits, not finite, negative, or in other digits
    str(2**63), str(-(2**63) - 1), "9" * 400, "1e400", "NaN", "-Infinity", "-1", "١٢٣",
    # NUL bytes (PostgreSQL refuses them in text), undecodable input, markup, wildcards, size
    "\x00", "a\x00b", "\ufffd", "' OR 1=1 --", "%_\\", "<script>alert(1)</script>", "\u202e", "x" * 5000, "",
]
# Pages whose GET parameters filter a list (the form in the context names them), and parameters every
# list reads besides its form.
LIST_PAGES = ["cluster_list", "history", "audit", "deleted_contacts", "uncategorized", "scan_list"]
ALWAYS = ["page", "per_page", "format", "sort", "status"]


def consume(response: Any) -> bytes:
    if isinstance(response, StreamingHttpResponse):
        return b"".join(response)
    return bytes(response.content)


class HostileFilterTestCase(DashboardTestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        audit.record("merge.patched", actor="user:sydney_manager", location_uids=[SYDNEY],
                     contact_uids=["ct_1000001_aaaaaa"])

    def params_of(self, client: Client, url: str) -> list[str]:
        response = client.get(url)
        assert response.status_code == 200, url
        form = (response.context or {}).get("form")
        fields = list(form.fields) if form is not None else []
        return [*fields, *ALWAYS]

    def walk(self, client: Client, url: str, extra: dict[str, str] | None = None) -> list[str]:
        failures = []
        for param in self.params_of(client, url):
            for value in HOSTILE:
                query = {**(extra or {}), param: value}
                response = client.get(url, query)
                body = consume(response)
                if response.status_code >= 500:
                    failures.append(f"{url} {param}={value[:40]!r} -> {response.status_code}")
                elif response.status_code == 400:
                    assert body, (url, param, value)
        return failures

    def test_every_list_page_survives_every_hostile_filter_value(self) -> None:
        client = Client(raise_request_exception=False)
        client.force_login(self.admin)
        failures = []
        for name in LIST_PAGES:
            failures += self.walk(client, reverse(name))
        assert failures == [], "\n".join(failures)

    def test_every_export_survives_every_hostile_filter_value(self) -> None:
        client = Client(raise_request_exception=False)
        client.force_login(self.auditor)
        failures = []
        for fmt in ("csv", "ndjson"):
            failures += self.walk(client, reverse("audit"), {"format": fmt})
        assert failures == [], "\n".join(failures)

    def test_ids_in_paths_and_selections_survive_hostile_values(self) -> None:
        client = Client(raise_request_exception=False)
        client.force_login(self.admin)
        failures = []
        for value in (str(2**63), "9" * 400, "0"):
            for path in (f"/clusters/{value}/", f"/history/{value}/"):
                response = client.get(path)
                if response.status_code >= 500:
                    failures.append(f"{path[:60]} -> {response.status_code}")
        for value in HOSTILE:
            response = client.get(reverse("approve_selected"), {"clusters": value})
            if response.status_code >= 500:
                failures.append(f"approve-selected clusters={value[:40]!r} -> {response.status_code}")
        for uid in ("%00", "a%00b", "x" * 3000):
            response = client.get(f"/contacts/{uid}/restore/")
            if response.status_code >= 500:
                failures.append(f"/contacts/{uid[:40]}/restore/ -> {response.status_code}")
        assert failures == [], "\n".join(failures)
