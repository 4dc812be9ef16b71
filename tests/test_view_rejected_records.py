"""The rejected-records page: what scans set aside, with reason and raw text, for admins only."""

from __future__ import annotations

from dedup.models import RejectedRecord, ScanRun
from tests.location_pages_base import SYDNEY, LocationPagesTestCase

URL = "/scans/rejected/"


class RejectedRecordsTestCase(LocationPagesTestCase):
    scan: ScanRun
    other: ScanRun

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.scan = ScanRun.objects.create(scope=[SYDNEY], scope_key=f"locations:{SYDNEY}", kind=ScanRun.FILE,
                                          state=ScanRun.SUCCEEDED, source_file="/exports/sydney.ndjson",
                                          rejected_count=120)  # fmt: skip
        RejectedRecord.objects.bulk_create(
            RejectedRecord(scan_run=cls.scan, source=cls.scan.source_file, line_number=n,
                           reason=f"malformed contact: reason {n}", raw=f'{{"uid": {n}}}')  # fmt: skip
            for n in range(1, 121)
        )
        cls.other = ScanRun.objects.create(scope_key="all", kind=ScanRun.FULL, state=ScanRun.SUCCEEDED, rejected_count=1)
        RejectedRecord.objects.create(scan_run=cls.other, source="podium", contact_uid="ct_nul",
                                      reason="contains a NUL character (U+0000)", raw='{"name": "A\\u0000B"}')  # fmt: skip

    def test_an_admin_sees_every_record_with_its_reason_and_raw_text(self) -> None:
        self.login(self.admin)
        response = self.client.get(URL)
        assert response.status_code == 200
        page = response.context["page"]
        assert page.paginator.count == 121 and len(page.object_list) == 50
        body = response.content.decode()
        assert "ct_nul" in body and "contains a NUL character (U+0000)" in body
        assert "{&quot;name&quot;: &quot;A\\u0000B&quot;}" in body  # the raw text, escaped, as read

    def test_the_records_of_one_scan_paginate(self) -> None:
        self.login(self.admin)
        first = self.client.get(URL, {"scan": self.scan.pk})
        assert first.context["scan"] == self.scan and first.context["page"].paginator.count == 120
        body = first.content.decode()
        assert "Rejected records of scan #" in body and f"?scan={self.scan.pk}&amp;page=2" in body
        assert "line 120" in body and "/exports/sydney.ndjson" in body and "ct_nul" not in body
        last = self.client.get(URL, {"scan": self.scan.pk, "page": 3})
        assert [r.line_number for r in last.context["page"]] == list(range(20, 0, -1))
        assert "line 1<" in last.content.decode()

    def test_a_mangled_filter_is_a_form_error_not_a_failure(self) -> None:
        self.login(self.admin)
        for value in ("abc", "9" * 40, "-1", "\x00"):
            response = self.client.get(URL, {"scan": value})
            assert response.status_code == 200, value
            assert response.context["form"].errors and response.context["page"].paginator.count == 121

    def test_managers_and_auditors_get_403(self) -> None:
        # Even a scan of the manager's own location: a rejected record's raw text can be any location's.
        for user in (self.sydney_manager, self.burleigh_manager, self.auditor):
            self.login(user)
            assert self.client.get(URL).status_code == 403, user
            assert self.client.get(URL, {"scan": self.scan.pk}).status_code == 403, user

    def test_anonymous_is_sent_to_sign_in(self) -> None:
        self.assert_login_redirect(self.client.get(URL))

    def test_it_is_linked_from_the_scans_page_and_the_scan_for_admins_only(self) -> None:
        link = f'href="/scans/rejected/?scan={self.scan.pk}"'
        self.login(self.admin)
        assert link in self.client.get("/scans/").content.decode()
        assert link in self.client.get(f"/scans/{self.scan.pk}/").content.decode()
        assert 'href="/scans/rejected/"' in self.client.get("/scans/").content.decode()
        self.login(self.sydney_manager)
        scans = self.client.get("/scans/").content.decode()
        assert "120 rejected" in scans and "/scans/rejected/" not in scans
        detail = self.client.get(f"/scans/{self.scan.pk}/").content.decode()
        assert "120 set aside, not indexed (an admin can see them)" in detail and "/scans/rejected/" not in detail

    def test_post_is_not_allowed(self) -> None:
        self.login(self.admin)
        assert self.client.post(URL).status_code == 405
