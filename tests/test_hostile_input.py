"""Hostile text in names, tags, attributes, addresses, rejected records and payloads renders as inert text
on every page that shows it.

The data is built here with the real indexer and detection (v4 contacts), not with the shared dashboard
base, so this test does not depend on how the view tests build their clusters.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, User
from django.test import TestCase
from django.utils import timezone

from dedup import audit
from dedup.detection import detect, member_records
from dedup.models import (
    Cluster,
    Contact,
    Location,
    LocationGrant,
    MergeOperation,
    RejectedRecord,
    ScanRun,
    UncategorizedPhone,
)
from dedup.roles import ROLE_NAMES
from dedup.survivorship import plan_merge
from podium_client import Location as PodiumLocation
from tests.index_helpers import contact, index

SCRIPT = "<script>alert('pwned')</script>"
TEMPLATE = "{{ request.user.password }}{% debug %}"
LONG = "X" * 3000
RTL = "\u202eexe.gnp\u202c محمد"
ATTR = '" onmouseover="alert(1)'
SYDNEY = "loc_sydney"


def make_user(username: str, role: str, locations: list[Location] | None = None) -> User:
    user = User.objects.create_user(username=username, password="correct-horse-battery-staple")
    user.groups.add(Group.objects.get(name=ROLE_NAMES[role]))
    for location in locations or []:
        LocationGrant.objects.create(user=user, location=location)
    return user


class HostileInputTestCase(TestCase):
    cluster: Cluster
    op: MergeOperation
    scan: ScanRun
    admin: User
    sydney_manager: User
    auditor: User

    @classmethod
    def setUpTestData(cls) -> None:
        index(
            contact("ct_6660001_aaaaaa", name=SCRIPT, phones=["0412 000 111"], tags=[TEMPLATE, ATTR],
                    attributes=[(SCRIPT, TEMPLATE)], address=RTL),
            contact("ct_6660002_bbbbbb", name=LONG, phones=["+61 412 000 111"], tags=[SCRIPT],
                    emails=[f"{ATTR}@example.com"], transactional_opt_out="PHONE"),
            contact("ct_6660003_cccccc", name=RTL, phones=["(04) 1200-0111"]),
            locations=[PodiumLocation(SYDNEY, "Sydney CBD", "AU"), PodiumLocation("loc_popup", SCRIPT, None)],
        )  # fmt: skip
        detect()
        cls.cluster = Cluster.objects.get(status=Cluster.OPEN)
        plan = plan_merge(member_records(cls.cluster))
        cls.op = MergeOperation.objects.create(
            cluster=cls.cluster, state=MergeOperation.COMPLIANCE_FAILED, primary_uid=plan.primary_uid,
            duplicate_uids=list(plan.duplicate_uids), plan=plan.to_dict(), last_error=SCRIPT,
        )  # fmt: skip
        Contact.objects.filter(uid="ct_6660002_bbbbbb").update(
            deleted_at=timezone.now(), merged_into_uid="ct_6660001_aaaaaa"
        )
        sydney = Location.objects.get(uid=SYDNEY)
        UncategorizedPhone.objects.create(contact=Contact.objects.get(uid="ct_6660001_aaaaaa"), location=sydney,
                                          raw=SCRIPT, code="ERR_DEDUP_001", reason=SCRIPT, region="AU")  # fmt: skip
        cls.scan = ScanRun.objects.create(
            scope_key="all", kind=ScanRun.FILE, state=ScanRun.SUCCEEDED, source_file=f"/tmp/{SCRIPT}.ndjson",
            rejected_count=1, error_message=SCRIPT,
        )  # fmt: skip
        RejectedRecord.objects.create(scan_run=cls.scan, source=cls.scan.source_file, line_number=7,
                                      contact_uid=ATTR[:64], reason=SCRIPT, raw=f'{{"name": "{SCRIPT}{ATTR}"}}')  # fmt: skip
        audit.record("test.hostile", actor=f"user:{SCRIPT}", location_uids=[SYDNEY],
                     contact_uids=["ct_6660001_aaaaaa"], payload={"note": SCRIPT, "tag": TEMPLATE})  # fmt: skip
        cls.admin = make_user("admin", "admin")
        cls.sydney_manager = make_user("sydney_manager", "manager", [sydney])
        cls.auditor = make_user("auditor", "auditor")

    def pages(self) -> list[str]:
        popup = Location.objects.get(uid="loc_popup")
        return [
            "/clusters/",
            f"/clusters/{self.cluster.pk}/",
            f"/history/{self.op.pk}/",
            "/history/",
            "/audit/",
            "/contacts/deleted/",
            "/contacts/ct_6660002_bbbbbb/restore/",
            "/uncategorized/",
            "/scans/",
            f"/scans/{self.scan.pk}/",
            f"/scans/rejected/?scan={self.scan.pk}",
            "/locations/",
            f"/locations/{popup.pk}/region/",
            "/",
        ]

    def test_scripts_and_markup_are_escaped_everywhere(self) -> None:
        self.client.force_login(self.admin)
        for path in self.pages():
            response = self.client.get(path, follow=True)  # an old link may lead to a page's stable address
            assert response.status_code == 200, path
            body = response.content.decode()
            assert "<script>alert" not in body, path
            assert 'onmouseover="alert' not in body, path

    def test_the_rejected_records_page_shows_the_raw_text_literally(self) -> None:
        self.client.force_login(self.admin)
        body = self.client.get("/scans/rejected/").content.decode()
        assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in body
        assert "&quot; onmouseover=&quot;alert(1)" in body

    def test_the_review_page_shows_the_text_literally(self) -> None:
        self.client.force_login(self.sydney_manager)
        body = self.client.get(f"/clusters/{self.cluster.pk}/", follow=True).content.decode()
        assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in body
        assert "{{ request.user.password }}" in body  # a tag that looks like a template stays literal
        assert "sha1$" not in body and "md5$" not in body and "pbkdf2" not in body
        assert 'dir="auto"' in body  # right-to-left text is isolated in its own direction
        assert "\u202e" in body  # and is kept, not mangled

    def test_long_values_are_cut_in_lists(self) -> None:
        self.client.force_login(self.sydney_manager)
        body = self.client.get("/clusters/").content.decode()
        indexed = LONG[:500]  # the index keeps the first 500 characters of a name
        assert indexed not in body  # cut further in the queue; the indexed value is on the review page
        assert indexed in self.client.get(f"/clusters/{self.cluster.pk}/", follow=True).content.decode()

    def test_the_csv_export_neutralizes_a_formula_actor(self) -> None:
        self.client.force_login(self.auditor)
        audit.record("test.formula", actor="=cmd|' /C calc'!A0", location_uids=[SYDNEY])
        response: Any = self.client.get("/audit/", {"event_type": "test.formula", "format": "csv"})
        text = b"".join(response).decode()
        assert ",'=cmd|" in text
