"""Indexing: Podium contacts become index rows, keys and uncategorized phones, in bulk and idempotently."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dedup.indexing import IndexWriter, iter_prepared_file, prepare_contact, survey_file
from dedup.models import Contact, ContactKey, UncategorizedPhone
from podium_client import Location
from tests.fixtures_emulator import make_contact

pytestmark = pytest.mark.django_db

LOCATIONS = [Location("loc_sydney", "Sydney CBD", "AU"), Location("loc_auckland", "Auckland", "NZ")]


def test_prepare_normalizes_every_channel_with_the_location_region() -> None:
    contact = make_contact(
        name="GARCIA, Maria",
        phones=("0412 345 678", "+61412345678", "n/a", "  "),
        emails=(" Maria@Example.COM ",),
        tags=("vip",),
        attributes=(("birthday", "1990-01-01"), ("empty", None)),
        address="1 George St",
    )
    prepared = prepare_contact(contact, "AU")
    assert [(k.kind, k.key, k.raw) for k in prepared.keys] == [
        ("PHONE", "+61412345678", "0412 345 678"),
        ("EMAIL", "maria@example.com", " Maria@Example.COM "),
    ]
    assert [(b.raw, b.code) for b in prepared.invalid_phones] == [("n/a", "ERR_DEDUP_001")]
    assert prepared.normalized_name == "garcia maria"
    # name, one phone (two spellings count once) + the invalid one, email, tag, one attribute, address
    assert prepared.field_count == 7


def test_a_national_number_is_read_with_its_location_country() -> None:
    nz = prepare_contact(make_contact(location_uid="loc_auckland", phones=("021 123 4567",)), "NZ")
    assert [k.key for k in nz.keys] == ["+64211234567"]
    # The same digits typed in Sydney are a Sydney landline: another number, another key.
    au = prepare_contact(make_contact(phones=("021 123 4567",)), "AU")
    assert [k.key for k in au.keys] == ["+61211234567"]


@pytest.mark.parametrize("method", ["auto", "orm"])
def test_write_upserts_contacts_and_replaces_their_keys(method: str) -> None:
    writer = IndexWriter("AU", method=method)
    writer.ensure_locations(LOCATIONS)
    first = make_contact(uid="ct_1", phones=("0412 345 678", "call me"), emails=("a@example.com",))
    other = make_contact(uid="ct_2", location_uid="loc_auckland", name="Aroha", phones=("021 123 4567",))
    result = writer.write([prepare_contact(first, "AU"), prepare_contact(other, "NZ")])
    assert result.contacts == 2 and result.invalid_phones == 1
    row = Contact.objects.get(uid="ct_1")
    assert row.location.uid == "loc_sydney" and row.field_count == 4 and row.is_active
    assert sorted(ContactKey.objects.filter(contact=row).values_list("kind", "key")) == [
        ("EMAIL", "a@example.com"),
        ("PHONE", "+61412345678"),
    ]
    bad = UncategorizedPhone.objects.get(contact=row)
    assert (bad.raw, bad.code, bad.region) == ("call me", "ERR_DEDUP_001", "AU")
    first_seen = bad.first_seen_at

    changed = make_contact(
        uid="ct_1",
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


def test_contacts_of_an_undeclared_location_get_a_placeholder_with_the_default_region() -> None:
    writer = IndexWriter("NZ")
    writer.write([prepare_contact(make_contact(uid="ct_x", location_uid="loc_new"), writer.region_for("loc_new"))])
    contact = Contact.objects.get(uid="ct_x")
    assert (contact.location.uid, contact.location.country) == ("loc_new", "NZ")


def test_an_export_file_is_surveyed_then_prepared_in_chunks(tmp_path: pytest.TempPathFactory) -> None:
    from podium_client.types import contact_export_line, location_export_line

    path = tmp_path / "export.ndjson"  # type: ignore[operator]
    contacts = [make_contact(uid=f"ct_{i}", location_uid="loc_auckland", phones=("021 123 4567",)) for i in range(5)]
    lines = [contact_export_line(contacts[0]), "", *map(location_export_line, LOCATIONS)]
    lines += [contact_export_line(c) for c in contacts[1:]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    survey = survey_file(str(path))
    assert [loc.uid for loc in survey.locations] == ["loc_sydney", "loc_auckland"]
    assert survey.contact_lines == 5
    regions = {loc.uid: loc.country for loc in survey.locations}
    chunks = list(iter_prepared_file(str(path), regions, "AU", chunk_lines=2, workers=0))
    assert [len(c.contacts) for c in chunks] == [2, 2, 1]
    assert all(k.key == "+64211234567" for c in chunks for p in c.contacts for k in p.keys)
    # Resuming after a line skips everything up to it.
    resumed = list(iter_prepared_file(str(path), regions, "AU", start_after_line=chunks[0].last_line, workers=0))
    assert sum(len(c.contacts) for c in resumed) == 3


def test_rewriting_a_contact_whose_keys_did_not_change_keeps_its_key_rows() -> None:
    writer = IndexWriter("AU")
    writer.ensure_locations(LOCATIONS)
    writer.write([prepare_contact(make_contact(uid="ct_1", phones=("0412 345 678",)), "AU")])
    before = list(ContactKey.objects.values_list("pk", "key"))
    renamed = make_contact(uid="ct_1", name="Maria G", phones=("0412 345 678",), updated_at=datetime(2025, 6, 1, tzinfo=UTC))
    writer.write([prepare_contact(renamed, "AU")])
    assert list(ContactKey.objects.values_list("pk", "key")) == before
    assert Contact.objects.get(uid="ct_1").name == "Maria G"
