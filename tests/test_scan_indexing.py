"""Indexing: v4 contacts become index rows, keys, locations and uncategorized phones, in bulk and idempotently."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dedup.exportfile import ExportFileError, iter_prepared_file, survey_file
from dedup.indexing import IndexWriter, prepare_contact
from dedup.models import Contact, ContactKey, ContactLocation, Location, UncategorizedPhone
from podium_client import Location as PodiumLocation
from podium_client.corpus import LOCATIONS as DEMO_LOCATIONS
from podium_client.types import contact_export_line, location_export_line
from tests.fixtures_emulator import make_contact
from tests.index_helpers import AUCKLAND, LOCATIONS, POPUP, SYDNEY, contact, index

pytestmark = pytest.mark.django_db


def locations_of(uid: str) -> list[str]:
    return sorted(ContactLocation.objects.filter(contact__uid=uid).values_list("location__uid", flat=True))


def test_prepare_normalizes_every_channel_with_the_location_region() -> None:
    maria = contact(
        "ct_1",
        name="GARCIA, Maria",
        phones=("0412 345 678", "+61412345678", "n/a", "  "),
        emails=(" Maria@Example.COM ",),
        tags=("vip",),
        attributes=(("birthday", "1990-01-01"), ("empty", None)),
        address="1 George St",
    )
    prepared = prepare_contact(maria, "AU")
    assert [(k.kind, k.key, k.raw) for k in prepared.keys] == [
        ("PHONE", "+61412345678", "0412 345 678"),
        ("EMAIL", "maria@example.com", " Maria@Example.COM "),
    ]
    assert [(b.raw, b.code) for b in prepared.invalid_phones] == [("n/a", "ERR_DEDUP_001")]
    assert prepared.normalized_name == "garcia maria"
    # name, one phone (two spellings count once) + the invalid one, email, tag, one attribute, address
    assert prepared.field_count == 7
    # Every channel keeps Podium's consent; tags and attributes keep their uids.
    assert prepared.channels[0]["marketingOptedInLocationUids"] == ["loc_sydney"]
    assert prepared.tags == [{"uid": maria.tags[0].uid, "label": "vip"}]
    assert prepared.address is not None and prepared.address["addressLine1"] == "1 George St"


def test_the_three_flags_come_from_the_channels_consent() -> None:
    opted_in = prepare_contact(contact("ct_1"), "AU")
    assert (opted_in.marketing_opt_out, opted_in.sms_opt_out, opted_in.email_opt_out) == (False, False, False)
    # Opted in for marketing at Sydney only, but the contact also belongs to Burleigh.
    partly = prepare_contact(contact("ct_2", locations=("loc_sydney", "loc_burleigh"), marketing_opted_in=["loc_sydney"]), "AU")
    assert partly.marketing_opt_out
    texts_refused = prepare_contact(contact("ct_3", emails=("a@example.com",), transactional_opt_out="PHONE"), "AU")
    assert (texts_refused.sms_opt_out, texts_refused.email_opt_out) == (True, False)


def test_a_national_number_is_read_with_its_location_country() -> None:
    nz = prepare_contact(contact("ct_1", locations=("loc_auckland",), phones=("021 123 4567",)), "NZ")
    assert [k.key for k in nz.keys] == ["+64211234567"]
    # The same digits typed in Sydney are a Sydney landline: another number, another key.
    au = prepare_contact(contact("ct_2", phones=("021 123 4567",)), "AU")
    assert [k.key for k in au.keys] == ["+61211234567"]


@pytest.mark.parametrize("method", ["auto", "orm"])
def test_write_upserts_contacts_and_replaces_their_keys(method: str) -> None:
    writer = IndexWriter("AU", method=method)
    writer.ensure_locations(LOCATIONS)
    first = contact("ct_1", phones=("0412 345 678", "call me"), emails=("a@example.com",))
    other = contact("ct_2", locations=("loc_auckland",), name="Aroha", phones=("021 123 4567",))
    result = writer.write([prepare_contact(first, "AU"), prepare_contact(other, "NZ")])
    assert result.contacts == 2 and result.invalid_phones == 1
    row = Contact.objects.get(uid="ct_1")
    assert row.location.uid == "loc_sydney" and row.field_count == 4 and row.is_active
    assert row.conversation_count == 1 and len(row.conversations) == 1
    assert sorted(ContactKey.objects.filter(contact=row).values_list("kind", "key")) == [
        ("EMAIL", "a@example.com"),
        ("PHONE", "+61412345678"),
    ]
    bad = UncategorizedPhone.objects.get(contact=row)
    assert (bad.raw, bad.code, bad.region) == ("call me", "ERR_DEDUP_001", "AU")
    first_seen = bad.first_seen_at

    changed = contact(
        "ct_1",
        phones=("0413 000 111", "call me"),
        updated_at=datetime(2025, 6, 1, tzinfo=UTC),
        deleted_at=datetime(2025, 6, 1, tzinfo=UTC),
    )
    writer.write([prepare_contact(changed, "AU")])
    row.refresh_from_db()
    assert Contact.objects.count() == 2
    assert row.deleted_at is not None and not row.is_active
    assert list(ContactKey.objects.filter(contact=row).values_list("key", flat=True)) == ["+61413000111"]
    # The phone still waiting in the uncategorized queue keeps the date it was first seen.
    assert UncategorizedPhone.objects.get(contact=row).first_seen_at == first_seen


@pytest.mark.parametrize("method", ["auto", "orm"])
def test_a_contact_in_several_locations_is_indexed_in_all_of_them(method: str) -> None:
    writer = IndexWriter("AU", method=method)
    writer.ensure_locations(LOCATIONS)
    both = contact("ct_1", locations=("loc_burleigh", "loc_sydney"), phones=("0412 345 678",))
    writer.write([prepare_contact(both, "AU")])
    row = Contact.objects.get(uid="ct_1")
    # The first location is the home (its region parses the numbers); every location is listed.
    assert row.location.uid == "loc_burleigh" and row.location_uids == ["loc_burleigh", "loc_sydney"]
    assert locations_of("ct_1") == ["loc_burleigh", "loc_sydney"]
    assert row.all_location_uids == ["loc_burleigh", "loc_sydney"]

    # Podium moves the contact: Sydney only now, and then Sydney and Auckland.
    moved = contact("ct_1", locations=("loc_sydney",), phones=("0412 345 678",), updated_at=datetime(2025, 6, 1, tzinfo=UTC))
    writer.write([prepare_contact(moved, "AU")])
    assert locations_of("ct_1") == ["loc_sydney"]
    assert ContactKey.objects.get(contact__uid="ct_1").location.uid == "loc_sydney"
    again = contact("ct_1", locations=("loc_sydney", "loc_auckland"), updated_at=datetime(2025, 7, 1, tzinfo=UTC))
    writer.write([prepare_contact(again, "AU")])
    assert locations_of("ct_1") == ["loc_auckland", "loc_sydney"]


def test_a_location_region_is_podiums_country_else_the_admins_else_the_default() -> None:
    writer = IndexWriter("AU")
    writer.ensure_locations([SYDNEY, AUCKLAND, POPUP])
    popup = Location.objects.get(uid="loc_popup")
    assert (popup.podium_country, popup.country, popup.region_source, popup.needs_region) == ("", "AU", "default", True)
    auckland = Location.objects.get(uid="loc_auckland")
    assert (auckland.country, auckland.region_source, auckland.needs_region) == ("NZ", "podium", False)
    assert writer.region_for("loc_auckland") == "NZ" and writer.region_for("loc_popup") == "AU"
    # A new location's contacts were never parsed with another region.
    assert not popup.needs_reparse and not auckland.needs_reparse

    # An admin gives the pop-up a region; the next listing (still no country) keeps it.
    Location.objects.filter(uid="loc_popup").update(region_override="NZ")
    IndexWriter("AU").ensure_locations([POPUP])
    popup.refresh_from_db()
    assert (popup.country, popup.region_source, popup.needs_region) == ("NZ", "admin", False)
    assert popup.needs_reparse  # its contacts were parsed with AU until re-parsed
    # Podium's own country, once it has one, wins over the admin's.
    IndexWriter("AU").ensure_locations([PodiumLocation("loc_popup", "Pop-up Van", "AU")])
    popup.refresh_from_db()
    assert (popup.country, popup.region_source) == ("AU", "podium")


def test_contacts_of_an_undeclared_location_get_a_placeholder_with_the_default_region() -> None:
    writer = IndexWriter("NZ")
    writer.write([prepare_contact(contact("ct_x", locations=("loc_new",)), writer.region_for("loc_new"))])
    row = Contact.objects.get(uid="ct_x")
    assert (row.location.uid, row.location.country) == ("loc_new", "NZ")
    assert row.location.needs_region


def _write_export(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_an_export_file_is_surveyed_then_prepared_in_chunks(tmp_path: Path) -> None:
    contacts = [make_contact(uid=f"ct_{i}", locations=(DEMO_LOCATIONS[2]["uid"],), phones=("021 123 4567",)) for i in range(5)]
    # Locations may come after contacts; blank lines are ignored.
    lines = [contact_export_line(contacts[0]), "", *map(location_export_line, DEMO_LOCATIONS)]
    lines += [contact_export_line(c) for c in contacts[1:]]
    path = _write_export(tmp_path / "export.ndjson", lines)
    survey = survey_file(path)
    assert [loc.uid for loc in survey.locations] == [loc["uid"] for loc in DEMO_LOCATIONS]
    assert [loc.country for loc in survey.locations] == ["AU", "AU", "NZ", None]  # addressDetails.country
    assert survey.contact_lines == 5 and survey.rejected == []
    regions = {loc.uid: loc.country or "AU" for loc in survey.locations}
    chunks = list(iter_prepared_file(path, regions, "AU", chunk_lines=2, workers=0))
    assert [len(c.contacts) for c in chunks] == [2, 2, 1]
    assert all(k.key == "+64211234567" for c in chunks for p in c.contacts for k in p.keys)
    assert [p.line_number for c in chunks for p in c.contacts] == [1, 7, 8, 9, 10]
    # Resuming after a line skips everything up to it.
    resumed = list(iter_prepared_file(path, regions, "AU", start_after_line=chunks[0].last_line, workers=0))
    assert sum(len(c.contacts) for c in resumed) == 3


def test_an_old_shape_export_is_refused_naming_the_expected_shape(tmp_path: Path) -> None:
    old_location = json.dumps({"object": "location", "uid": "loc_x", "name": "X", "country": "AU"})
    with pytest.raises(ExportFileError, match="line 1: a location line in the pre-v4 shape.*expected Podium's v4 export"):
        survey_file(_write_export(tmp_path / "a.ndjson", [old_location]))
    old_contact = json.dumps({"uid": "ct_1", "locationUid": "loc_x", "name": "A", "channels": [],
                              "marketingOptOut": False, "smsOptOut": False, "emailOptOut": False})  # fmt: skip
    with pytest.raises(ExportFileError, match=r"line 2: a contact line in the pre-v4 shape \(has .*locationUid.*\)"):
        survey_file(_write_export(tmp_path / "b.ndjson", [location_export_line(DEMO_LOCATIONS[0]), old_contact]))


def test_rewriting_a_contact_whose_keys_did_not_change_keeps_its_key_rows() -> None:
    index(contact("ct_1", phones=("0412 345 678",)))
    before = list(ContactKey.objects.values_list("pk", "key"))
    locations_before = list(ContactLocation.objects.values_list("pk", flat=True))
    index(contact("ct_1", name="Maria G", phones=("0412 345 678",), updated_at=datetime(2025, 6, 1, tzinfo=UTC)))
    assert list(ContactKey.objects.values_list("pk", "key")) == before
    assert list(ContactLocation.objects.values_list("pk", flat=True)) == locations_before
    assert Contact.objects.get(uid="ct_1").name == "Maria G"


def test_a_slimmed_contact_keeps_every_field_but_its_json_objects_and_gets_them_back() -> None:
    from dedup.indexing import full_payload, slim

    prepared = prepare_contact(
        contact("ct_s", name="Maria", phones=("0412 345 678", "bogus"), emails=("m@example.com",), tags=("VIP",)),
        "AU",
    )
    assert prepared.channels and prepared.tags and prepared.json_text is not None
    slimmed = slim(prepared, 17)
    emptied = {"channels", "tags", "attributes", "address", "conversations"}
    for name in prepared._fields:
        if name in emptied:
            assert getattr(slimmed, name) in ([], None), name
        elif name == "line_number":
            assert slimmed.line_number == 17
        else:
            assert getattr(slimmed, name) == getattr(prepared, name), name
    assert slim(prepared).line_number is None and slim(slimmed).line_number == 17
    assert full_payload(slimmed) == prepared._replace(line_number=17)
