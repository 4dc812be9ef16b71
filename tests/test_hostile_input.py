"""Hostile text in names, tags, notes and payloads renders as inert text on every page that shows it."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from dedup import audit
from dedup.models import Contact, MergeOperation, UncategorizedPhone
from tests.dashboard_base import SYDNEY, DashboardTestCase, build_cluster, make_operation
from tests.fixtures_emulator import make_contact

SCRIPT = "<script>alert('pwned')</script>"
TEMPLATE = "{{ request.user.password }}{% debug %}"
LONG = "X" * 3000
RTL = "\u202eexe.gnp\u202c محمد"
ATTR = '" onmouseover="alert(1)'


class HostileInputTestCase(DashboardTestCase):
    cluster: Any
    op: Any

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.cluster = build_cluster([
            make_contact("ct_6660001_aaaaaa", SYDNEY, SCRIPT, phones=["0412 000 111"], tags=[TEMPLATE, ATTR],
                         attributes=[(SCRIPT, TEMPLATE)], address=RTL),
            make_contact("ct_6660002_bbbbbb", SYDNEY, LONG, phones=["+61 412 000 111"], tags=[SCRIPT],
                         emails=[f"{ATTR}@example.com"], sms_opt_out=True),
            make_contact("ct_6660003_cccccc", SYDNEY, RTL, phones=["(04) 1200-0111"]),
        ])
        cls.op = make_operation(cls.cluster, MergeOperation.COMPLIANCE_FAILED, last_error=SCRIPT)
        Contact.objects.filter(uid="ct_6660002_bbbbbb").update(deleted_at=timezone.now(),
                                                                merged_into_uid="ct_6660001_aaaaaa")
        UncategorizedPhone.objects.create(contact=Contact.objects.get(uid="ct_6660001_aaaaaa"), location=cls.sydney,
                                          raw=SCRIPT, code="ERR_DEDUP_001", reason=SCRIPT, region="AU")
        audit.record("test.hostile", actor=f"user:{SCRIPT}", location_uids=[SYDNEY],
                     contact_uids=["ct_6660001_aaaaaa"], payload={"note": SCRIPT, "tag": TEMPLATE})

    def pages(self) -> list[str]:
        return [
            "/clusters/",
            f"/clusters/{self.cluster.cluster_id}/",
            f"/history/{self.op.pk}/",
            "/history/",
            "/audit/",
            "/contacts/deleted/",
            "/contacts/ct_6660002_bbbbbb/restore/",
            "/uncategorized/",
            "/",
        ]

    def test_scripts_and_markup_are_escaped_everywhere(self) -> None:
        self.login(self.admin)
        for path in self.pages():
            response = self.client.get(path)
            assert response.status_code == 200, path
            body = response.content.decode()
            assert "<script>alert" not in body, path
            assert 'onmouseover="alert' not in body, path

    def test_the_review_page_shows_the_text_literally(self) -> None:
        self.login(self.sydney_manager)
        body = self.client.get(f"/clusters/{self.cluster.cluster_id}/").content.decode()
        assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in body
        assert "{{ request.user.password }}" in body  # a tag that looks like a template stays literal
        assert "sha1$" not in body and "md5$" not in body
        assert 'dir="auto"' in body  # right-to-left text is isolated in its own direction
        assert "\u202e" in body  # and is kept, not mangled

    def test_long_values_are_cut_in_lists(self) -> None:
        self.login(self.sydney_manager)
        body = self.client.get("/clusters/").content.decode()
        indexed = LONG[:500]  # the index keeps the first 500 characters of a name
        assert indexed not in body  # cut further in the queue; the indexed value is on the review page
        assert indexed in self.client.get(f"/clusters/{self.cluster.cluster_id}/").content.decode()

    def test_the_csv_export_neutralizes_a_formula_actor(self) -> None:
        self.login(self.auditor)
        audit.record("test.formula", actor="=cmd|' /C calc'!A0", location_uids=[SYDNEY])
        response = self.client.get("/audit/", {"event_type": "test.formula", "format": "csv"})
        text = b"".join(response).decode()
        assert ",'=cmd|" in text
