"""Every main page at 1280 px and 390 px, with hostile data on it: readable, no sideways scrolling on a phone."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from dedup import audit
from dedup.models import Contact, MergeOperation, ScanRun, UncategorizedPhone
from tests.browser.conftest import Browser, People
from tests.dashboard_base import BURLEIGH, SYDNEY, build_cluster, household, make_operation, person

LONG = "Wolfeschlegelsteinhausenbergerdorff" * 12
RTL = "محمد عبد الله \u202eevil.exe"


def hostile_people() -> list[Any]:
    return [
        person("ct_6660001_aaaaaa", SYDNEY, "<script>alert('x')</script>", phones=["0412 000 111"],
               tags=["{{ 7*7 }}", LONG], emails=[f"{LONG}@example.com"], attributes=[(LONG, LONG)]),
        person("ct_6660002_bbbbbb", [SYDNEY, BURLEIGH], LONG, phones=["+61 412 000 111"], tags=["VIP"],
               address={"addressLine1": LONG, "city": RTL, "postalCode": "2000"}),
        person("ct_6660003_cccccc", SYDNEY, RTL, phones=["(04) 1200-0111"], transactional_opt_out="PHONE",
               marketing_opt_out=True),
    ]


def test_every_main_page_fits_a_phone(browser: Browser, people: People) -> None:
    hostile = build_cluster(hostile_people())
    cross = build_cluster([household(SYDNEY, "ct_210")[0], household(BURLEIGH, "ct_220")[1]])
    op = make_operation(hostile, MergeOperation.COMPLIANCE_FAILED, error_code="ERR_DEDUP_010", last_error=LONG)
    Contact.objects.filter(uid="ct_6660002_bbbbbb").update(deleted_at=timezone.now(), merged_into_uid="ct_6660001_aaaaaa")
    UncategorizedPhone.objects.create(contact=Contact.objects.get(uid="ct_6660001_aaaaaa"), location=people.sydney,
                                      raw=LONG, code="ERR_DEDUP_001", reason="not a number", region="AU")
    ScanRun.objects.create(scope=[SYDNEY], scope_key="loc:x", state=ScanRun.RUNNING, contacts_seen=500,
                           contacts_total=2000, started_at=timezone.now())
    audit.record("test.hostile", location_uids=[SYDNEY], contact_uids=["ct_6660001_aaaaaa"],
                 payload={"name": "<script>alert(1)</script>", "long": LONG})

    browser.sign_in(people.admin)
    pages = {
        "dashboard": "/",
        "clusters": "/clusters/",
        "cluster": f"/clusters/{hostile.cluster_id}/",
        "cross-cluster": f"/clusters/{cross.cluster_id}/",
        "history": "/history/",
        "merge": f"/history/{op.pk}/",
        "audit": "/audit/",
        "deleted": "/contacts/deleted/",
        "restore": "/contacts/ct_6660002_bbbbbb/restore/",
        "uncategorized": "/uncategorized/",
        "scans": "/scans/",
        "settings": "/settings/",
    }
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    browser.page.on("dialog", on_dialog)
    for label, path in pages.items():
        browser.go(path)
        browser.screenshot(label)
    assert dialogs == [], "a script from contact data ran"
    assert browser.page.evaluate("typeof window.htmx") == "object"
