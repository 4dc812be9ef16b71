"""A location's parsing region (issue 9): Podium's country, else an admin's choice (audited), else the
default; changing the region in force re-parses the location's contacts, in a background scan run or at
the end of the scan that holds the location."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from dedup import reparsing
from dedup.models import AuditEvent, Cluster, Contact, ContactKey, Location, ScanRun, UncategorizedPhone
from dedup.regions import RegionNotSettable, region_choices, set_region, start_reparse
from dedup.scanning import run_scan, start_scan
from podium_client import Location as PodiumLocation
from podium_client.corpus import LOCATIONS, POPUP, generate_corpus
from podium_client.types import location_export_line
from tests.fixtures_emulator import make_contact
from tests.index_helpers import AUCKLAND, SYDNEY, contact, index

pytestmark = pytest.mark.django_db

POP = PodiumLocation("loc_popup", "Pop-up Van", None)


@pytest.fixture
def admin(db: None) -> User:
    return User.objects.create_user("boss")


def keys_of(uid: str) -> list[str]:
    return sorted(ContactKey.objects.filter(contact__uid=uid, kind="PHONE").values_list("key", flat=True))


@pytest.fixture
def popup_contacts(db: None) -> None:
    """Contacts of a location Podium gives no country: read as AU (the default) until an admin says NZ."""
    index(
        contact("ct_pop1", locations=("loc_popup",), name="Aroha Ngata", phones=("021 123 4567",)),
        contact("ct_pop2", locations=("loc_popup",), name="Wiremu Parata", phones=("09 300 1234",)),
        contact("ct_pop3", locations=("loc_popup",), name="Mere Tane", phones=("+64 27 555 0101",)),
        # Home in Sydney, also at the pop-up: its numbers are read in its home's region.
        contact("ct_syd", locations=("loc_sydney", "loc_popup"), name="Jack Smith", phones=("0412 345 678",)),
        contact("ct_akl", locations=("loc_auckland",), name="Aroha Ngata", phones=("+64 21 123 4567",)),
        locations=[SYDNEY, AUCKLAND, POP],
    )


def test_region_choices_are_the_regions_phone_numbers_can_be_read_in() -> None:
    choices = dict(region_choices())
    assert choices["AU"] == "Australia (AU)" and choices["NZ"] == "New Zealand (NZ)"
    assert len(choices) > 200 and all(len(code) == 2 and code.isupper() for code in choices)


def test_the_urlconf_and_system_checks_leave_the_geocoder_unloaded() -> None:
    """Every web process and ``manage.py`` command loads the URLconf (system checks do): the region
    names' geocoder (about 100 MB of place names) must wait until a region form is shown. A 1M
    ``manage.py scan --from-file`` peaked at 577 MB with it loaded, against 485 MB without."""
    probe = (
        "import sys, django; django.setup(); "
        "from django.core import checks; import dedup.urls; checks.run_checks(); "
        "loaded = sorted(m for m in sys.modules if m.startswith(('phonenumbers.geocoder', 'phonenumbers.geodata'))); "
        "print(loaded)"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "dedup.settings", "DEBUG": "1"}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    # The names still come from it when asked for (checked above, in this process).
    assert dict(region_choices())["NZ"] == "New Zealand (NZ)"


def test_an_admins_region_is_audited_and_the_location_re_parsed(
    popup_contacts: None, admin: User, django_capture_on_commit_callbacks: Any
) -> None:
    popup = Location.objects.get(uid="loc_popup")
    assert popup.needs_region and popup.country == "AU" and not popup.needs_reparse
    assert keys_of("ct_pop1") == ["+61211234567"]  # an AU landline: wrong
    assert UncategorizedPhone.objects.filter(contact__uid="ct_pop2", region="AU").exists()
    assert not Cluster.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):  # the background task runs inline in tests
        change = set_region(popup, "nz", admin)
    assert change.changed and change.reparse is not None and change.waiting_for is None
    popup.refresh_from_db()
    assert (popup.country, popup.region_override, popup.region_source) == ("NZ", "NZ", "admin")
    assert not popup.needs_region and not popup.needs_reparse and popup.region_parsed == "NZ"

    event = AuditEvent.objects.get(event_type="location.region_set")
    assert event.actor == "user:boss" and event.location_uids == ["loc_popup"]
    assert event.payload["before"] == {"regionOverride": None, "region": "AU", "source": "default"}
    assert event.payload["after"] == {"regionOverride": "NZ", "region": "NZ", "source": "admin"}

    run = ScanRun.objects.get(pk=change.reparse.pk)
    assert run.kind == ScanRun.REPARSE and run.state == ScanRun.SUCCEEDED and run.scope == ["loc_popup"]
    assert run.contacts_total == run.contacts_seen == 3  # the three whose home is the pop-up
    assert run.checkpoint["reparsed"] == {"loc_popup": 3}
    assert keys_of("ct_pop1") == ["+64211234567"] and keys_of("ct_pop2") == ["+6493001234"]
    assert keys_of("ct_pop3") == ["+64275550101"]
    assert not UncategorizedPhone.objects.filter(contact__uid="ct_pop2").exists()
    assert keys_of("ct_syd") == ["+61412345678"]  # home in Sydney: untouched
    # The corrected number now meets the Auckland contact: detection followed the changed keys.
    cluster = Cluster.objects.get(status=Cluster.OPEN)
    assert sorted(cluster.members.values_list("contact__uid", flat=True)) == ["ct_akl", "ct_pop1"]
    assert cluster.cross_location and cluster.scan_run_id == run.pk


def test_setting_the_region_already_in_force_re_parses_nothing(popup_contacts: None, admin: User) -> None:
    popup = Location.objects.get(uid="loc_popup")
    change = set_region(popup, "AU", admin)  # the default was right: the admin confirms it
    assert change.changed and change.reparse is None and change.waiting_for is None
    popup.refresh_from_db()
    assert popup.region_source == "admin" and not popup.needs_region and not popup.needs_reparse
    assert not ScanRun.objects.exists() and AuditEvent.objects.filter(event_type="location.region_set").count() == 1
    # The same choice again changes nothing and records nothing.
    assert not set_region(popup, "AU", admin).changed
    assert AuditEvent.objects.filter(event_type="location.region_set").count() == 1


def test_podiums_country_cannot_be_overridden_and_a_region_must_be_readable(
    popup_contacts: None, admin: User
) -> None:
    with pytest.raises(RegionNotSettable, match="Podium gives Auckland the country NZ"):
        set_region(Location.objects.get(uid="loc_auckland"), "AU", admin)
    with pytest.raises(ValueError, match="not a region"):
        set_region(Location.objects.get(uid="loc_popup"), "ZZ", admin)
    assert not AuditEvent.objects.exists() and Location.objects.get(uid="loc_auckland").region_override == ""


def test_a_scan_holding_the_location_re_parses_it_when_it_finishes(
    popup_contacts: None, admin: User, tmp_path: Path
) -> None:
    # A file scan of every location is queued (its worker has not started it yet).
    path = tmp_path / "export.ndjson"
    path.write_text(json.dumps(make_contact(locations=("loc_sydney",), phones=("0413 000 000",))) + "\n")
    queued = start_scan(from_file=str(path), run_async=True)
    change = set_region(Location.objects.get(uid="loc_popup"), "NZ", admin)
    assert change.reparse is None and change.waiting_for is not None and change.waiting_for.holder.pk == queued.pk
    assert Location.objects.get(uid="loc_popup").needs_reparse
    assert keys_of("ct_pop1") == ["+61211234567"]

    done = run_scan(queued)
    assert done.state == ScanRun.SUCCEEDED and done.checkpoint["reparsed"] == {"loc_popup": 3}
    assert done.contacts_seen == 1  # the file's contacts; the re-parsed ones are not "read"
    assert keys_of("ct_pop1") == ["+64211234567"] and not Location.objects.get(uid="loc_popup").needs_reparse
    assert Cluster.objects.filter(status=Cluster.OPEN, members__contact__uid="ct_pop1").exists()


def test_podium_giving_a_country_later_re_parses_at_the_next_scan(tmp_path: Path) -> None:
    # A demo corpus: its pop-up van has no country in Podium, so its contacts are read as AU.
    lines, truth = generate_corpus(400, 11)
    first = tmp_path / "first.ndjson"
    first.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert start_scan(from_file=str(first), run_async=False).state == ScanRun.SUCCEEDED
    homed = Contact.objects.filter(location__uid=POPUP).count()
    assert homed > 5 and Location.objects.get(uid=POPUP).needs_region

    # Podium now says the van is in New Zealand; the next export carries the locations and one contact.
    popup = next(loc for loc in LOCATIONS if loc["uid"] == POPUP)
    moved = {**popup, "addressDetails": {**popup["addressDetails"], "country": "NZ"}}
    second = tmp_path / "second.ndjson"
    contact_line = json.dumps(make_contact(locations=(LOCATIONS[0]["uid"],), phones=("0413 000 000",)))
    second.write_text("\n".join([location_export_line(moved), contact_line]) + "\n", encoding="utf-8")
    run = start_scan(from_file=str(second), run_async=False)
    location = Location.objects.get(uid=POPUP)
    assert (location.country, location.region_source, location.needs_region) == ("NZ", "podium", False)
    assert run.checkpoint["reparsed"] == {POPUP: homed} and not location.needs_reparse
    assert UncategorizedPhone.objects.filter(location=location).exclude(region="NZ").count() == 0


def test_a_re_parse_run_reports_progress_batch_by_batch(
    popup_contacts: None, admin: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reparsing, "BATCH_SIZE", 2)
    Location.objects.filter(uid="loc_popup").update(region_override="NZ", country="NZ")
    seen: list[tuple[int, int | None, int]] = []
    run = start_scan(locations=["loc_popup"], reparse=True, run_async=False,
                     progress_callback=lambda r: seen.append((r.contacts_seen, r.contacts_total, r.pages)))  # fmt: skip
    assert run.kind == ScanRun.REPARSE and run.state == ScanRun.SUCCEEDED
    assert (run.contacts_seen, run.contacts_total, run.pages) == (3, 3, 2)
    assert (2, 3, 1) in seen and (3, 3, 2) in seen
    # Nothing left to do: starting another re-parse finds no stale location.
    again = start_reparse(Location.objects.get(uid="loc_popup"), admin)
    assert again.reparse is not None
    assert ScanRun.objects.get(pk=again.reparse.pk).state == ScanRun.QUEUED  # queued for a worker
