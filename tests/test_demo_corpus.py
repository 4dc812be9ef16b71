"""The demo corpus: v4 export shape, deterministic, consistent with its truth, and carrying every kind of mess."""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
from django.core.management import call_command

from podium_client import openapi
from podium_client.corpus import (
    AUCKLAND,
    BURLEIGH,
    LOCATIONS,
    ORGANIZATION_UID,
    POPUP,
    SYDNEY,
    generate_corpus,
    truth_path_for,
    write_corpus,
)

PEOPLE = 3000
SEED = 77
#: Where each location's people really live; Podium knows it for all but the pop-up.
REGION = {SYDNEY: "AU", BURLEIGH: "AU", AUCKLAND: "NZ", POPUP: "AU"}

Contact = dict[str, Any]


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], dict[str, str]]:
    return generate_corpus(PEOPLE, SEED)


@pytest.fixture(scope="module")
def parsed(corpus: tuple[list[str], dict[str, str]]) -> tuple[list[dict[str, Any]], list[Contact]]:
    objects = [json.loads(line) for line in corpus[0]]
    return [o for o in objects if o.get("object") == "location"], [o for o in objects if "object" not in o]


def _e164(raw: str, region: str) -> str | None:
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    return (
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        if phonenumbers.is_valid_number(number)
        else None
    )


def _locations(c: Contact) -> list[str]:
    return [loc["uid"] for loc in c["locations"]]


_TITLES = {"mr", "mrs", "ms", "miss", "dr", "mx"}


def _name_key(name: str | None) -> str | None:
    """A deliberately simple normalizer (case, accents, titles, "Last, First"); no nicknames."""
    if not name or not name.strip():
        return None
    text = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c)).lower()
    tokens = [t.strip(".") for t in re.split(r"[\s,]+", text) if t.strip(".")]
    return " ".join(sorted(t for t in tokens if t not in _TITLES))


def _opt_outs(c: Contact) -> tuple[bool, bool, bool]:
    """The product's three flags, derived from Podium's consent model as the contract says."""
    locations = set(_locations(c))
    marketing = any(locations - set(ch["marketingOptedInLocationUids"]) for ch in c["channels"])
    sms = any(ch["transactionalOptedOutAt"] for ch in c["channels"] if ch["type"] == "PHONE")
    email = any(ch["transactionalOptedOutAt"] for ch in c["channels"] if ch["type"] == "EMAIL")
    return marketing, sms, email


@pytest.fixture(scope="module")
def keyed(parsed: tuple[list[dict[str, Any]], list[Contact]]) -> dict[tuple[str, str], list[Contact]]:
    """Contacts by (location, E.164 of each valid phone), a contact of two locations under both."""
    by_key: dict[tuple[str, str], list[Contact]] = defaultdict(list)
    for c in parsed[1]:
        region = REGION[_locations(c)[0]]
        for key in {_e164(p, region) for p in c["phoneNumbers"]} - {None}:
            assert key is not None
            for location in _locations(c):
                by_key[(location, key)].append(c)
    return by_key


def test_same_seed_same_corpus_other_seed_other_corpus(corpus: tuple[list[str], dict[str, str]]) -> None:
    assert generate_corpus(PEOPLE, SEED) == corpus
    other = generate_corpus(PEOPLE, SEED + 1)
    assert other[0][4:] != corpus[0][4:] and set(other[1]).isdisjoint(corpus[1])


def test_every_line_is_podiums_v4_shape_exactly() -> None:
    lines, _ = generate_corpus(300, 5)
    location_check = openapi.validator(openapi.strict(openapi.schema_for("location")))
    contact_schema = openapi.schema_for("contact")
    contact_schema.pop("nullable")
    contact_check = openapi.validator(openapi.strict(contact_schema))
    for line in lines:
        obj = json.loads(line)
        if obj.get("object") == "location":
            obj.pop("object")
            assert openapi.validate(obj, location_check) == []
        else:
            assert openapi.validate(obj, contact_check) == [], obj


def test_locations_and_the_one_without_a_country(parsed: tuple[list[dict[str, Any]], list[Contact]]) -> None:
    locations, contacts = parsed
    assert (
        [loc["uid"] for loc in locations]
        == [SYDNEY, BURLEIGH, AUCKLAND, POPUP]
        == [loc["uid"] for loc in LOCATIONS]
    )
    assert [loc["addressDetails"]["country"] for loc in locations] == ["AU", "AU", "NZ", None]
    popup = [c for c in contacts if _locations(c)[0] == POPUP]
    assert 50 <= len(popup) <= 0.1 * len(contacts)
    # Typed in the Australian national format Podium gives no region for.
    assert any(re.fullmatch(r"04\d\d \d{3} \d{3}", p) for c in popup for p in c["phoneNumbers"])


def test_uids_are_uuids_and_org_wide_for_tags_and_attributes(
    parsed: tuple[list[dict[str, Any]], list[Contact]],
) -> None:
    contacts = parsed[1]
    uids = [c["uid"] for c in contacts]
    assert len(set(uids)) == len(uids) and all(uuid.UUID(u).version == 4 for u in uids)
    conversations = [conv["uid"] for c in contacts for conv in c["conversations"]]
    assert len(set(conversations)) == len(conversations)
    assert {c["organization"]["uid"] for c in contacts} == {ORGANIZATION_UID}
    tag_uids: dict[str, set[str]] = defaultdict(set)
    for c in contacts:
        for tag in c["tags"]:
            tag_uids[tag["label"]].add(tag["uid"])
        for attribute in c["attributes"]:
            tag_uids["attribute:" + attribute["label"]].add(attribute["uid"])
    assert len(tag_uids) >= 8 and all(len(u) == 1 for u in tag_uids.values())
    assert all(c["updatedAt"] >= c["createdAt"] for c in contacts)


def test_most_contacts_have_one_to_three_conversations(
    parsed: tuple[list[dict[str, Any]], list[Contact]],
) -> None:
    counts = Counter(len(c["conversations"]) for c in parsed[1])
    assert set(counts) == {0, 1, 2, 3}
    assert (
        counts[0] / sum(counts.values()) < 0.25 < (counts[1] + counts[2] + counts[3]) / sum(counts.values())
    )


def test_truth_covers_every_contact_and_every_person(
    corpus: tuple[list[str], dict[str, str]], parsed: tuple[list[dict[str, Any]], list[Contact]]
) -> None:
    truth = corpus[1]
    assert set(truth) == {c["uid"] for c in parsed[1]}
    assert len(set(truth.values())) == PEOPLE


def test_write_corpus_streams_the_same_corpus_and_truth(tmp_path: Path) -> None:
    out = tmp_path / "demo.ndjson"
    summary = write_corpus(out, 200, 5)
    lines, truth = generate_corpus(200, 5)
    assert out.read_text().splitlines() == lines
    truth_file = truth_path_for(out)
    assert truth_file == tmp_path / "demo.truth.json"
    assert json.loads(truth_file.read_text()) == {"seed": 5, "people": 200, "personOf": truth}
    assert summary.contacts == len(truth) and summary.kinds["duplicated_people"] > 0


def test_one_mobile_in_many_spellings(parsed: tuple[list[dict[str, Any]], list[Contact]]) -> None:
    phones = [p for c in parsed[1] if _locations(c)[0] != AUCKLAND for p in c["phoneNumbers"]]
    patterns = {
        "+61 412 345 678": r"\+61 4\d\d \d{3} \d{3}",
        "0412 345 678": r"04\d\d \d{3} \d{3}",
        "(04) 1234-5678": r"\(04\) \d{4}-\d{4}",
        "+61412345678": r"\+614\d{8}",
        "tel:+61-412-345-678": r"tel:\+61-4\d\d-\d{3}-\d{3}",
        "+61 (0)412 345 678": r"\+61 \(0\)4\d\d \d{3} \d{3}",
    }
    for example, pattern in patterns.items():
        assert any(re.fullmatch(pattern, p) for p in phones), example
    assert any(p != p.strip() for p in phones), "spaces around"


def test_a_person_typed_several_ways_parses_to_one_number(
    corpus: tuple[list[str], dict[str, str]], keyed: dict[tuple[str, str], list[Contact]]
) -> None:
    truth = corpus[1]
    widest = max(
        (members for members in keyed.values() if len({truth[m["uid"]] for m in members}) == 1),
        key=lambda members: len({p for m in members for p in m["phoneNumbers"]}),
    )
    assert len({p for m in widest for p in m["phoneNumbers"]}) >= 3


def test_nz_numbers_in_national_format_at_auckland(
    parsed: tuple[list[dict[str, Any]], list[Contact]],
) -> None:
    phones = [p for c in parsed[1] if _locations(c)[0] == AUCKLAND for p in c["phoneNumbers"]]
    assert any(re.fullmatch(r"02[127] \d{3} \d{4}", p) for p in phones)
    assert all(_e164(p, "NZ") is None or not p.strip().startswith("04") for p in phones)


def _people_sharing(
    keyed: dict[tuple[str, str], list[Contact]], truth: dict[str, str]
) -> list[list[Contact]]:
    return [m for m in keyed.values() if len({truth[c["uid"]] for c in m}) > 1]


def test_households_share_a_phone_with_different_first_names(
    corpus: tuple[list[str], dict[str, str]], keyed: dict[tuple[str, str], list[Contact]]
) -> None:
    truth = corpus[1]
    households = 0
    for members in _people_sharing(keyed, truth):
        named = [(truth[c["uid"]], _name_key(c["name"])) for c in members if _name_key(c["name"])]
        if len({p for p, _ in named}) > 1 and len({n for _, n in named}) > 1:
            lasts = [set(n.split()) for _, n in named if n]
            if set.intersection(*lasts):
                households += 1
    assert households >= 20


def test_reassigned_numbers_belong_to_people_with_other_names(
    corpus: tuple[list[str], dict[str, str]], keyed: dict[tuple[str, str], list[Contact]]
) -> None:
    truth = corpus[1]
    reassigned = 0
    for members in _people_sharing(keyed, truth):
        names = {truth[c["uid"]]: _name_key(c["name"]) for c in members if _name_key(c["name"])}
        token_sets = [set(n.split()) for n in names.values() if n]
        if len(token_sets) > 1 and not set.intersection(*token_sets):
            reassigned += 1
    assert reassigned >= 5


def test_same_customer_at_two_locations_as_two_contacts_and_as_one(
    corpus: tuple[list[str], dict[str, str]],
    parsed: tuple[list[dict[str, Any]], list[Contact]],
    keyed: dict[tuple[str, str], list[Contact]],
) -> None:
    truth = corpus[1]
    locations_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    typed_abroad = False
    for (location, key), members in keyed.items():
        for c in members:
            if len(c["locations"]) == 1:
                locations_of[(truth[c["uid"]], key)].add(location)
            if location == AUCKLAND and _locations(c)[0] == AUCKLAND and key.startswith("+61"):
                typed_abroad = True
    assert sum(len(locs) > 1 for locs in locations_of.values()) >= 20, "two contacts at two locations"
    assert typed_abroad
    shared = [c for c in parsed[1] if len(c["locations"]) == 2]
    assert len(shared) >= 50, "one contact belonging to two locations"
    # Opted in at both of its locations unless it carries an opt-out.
    assert (
        sum(
            set(_locations(c)) <= set(c["channels"][0]["marketingOptedInLocationUids"])
            for c in shared
            if c["channels"]
        )
        > 30
    )


def test_two_phones_junk_email_only_and_empty_contacts(
    parsed: tuple[list[dict[str, Any]], list[Contact]],
) -> None:
    contacts = parsed[1]

    def valid(c: Contact) -> set[str | None]:
        return {_e164(p, REGION[_locations(c)[0]]) for p in c["phoneNumbers"]} - {None}

    assert len([c for c in contacts if len(valid(c)) >= 2]) >= 20
    junk = [p for c in contacts for p in c["phoneNumbers"] if _e164(p, REGION[_locations(c)[0]]) is None]
    assert len(junk) >= 30 and "n/a" in {j.lower() for j in junk}
    email_only = [c for c in contacts if not c["phoneNumbers"] and c["emails"]]
    assert len(email_only) >= 20
    assert any(not c["channels"] for c in contacts)
    assert all(
        c["phoneNumbers"] == [ch["identifier"] for ch in c["channels"] if ch["type"] == "PHONE"]
        for c in contacts
    )
    assert any(e != e.lower() for c in contacts for e in c["emails"]), "emails typed in varied case"


def test_opt_outs_sit_on_one_duplicate_only_in_podiums_consent_model(
    corpus: tuple[list[str], dict[str, str]], parsed: tuple[list[dict[str, Any]], list[Contact]]
) -> None:
    truth = corpus[1]
    by_person: dict[str, list[Contact]] = defaultdict(list)
    for c in parsed[1]:
        by_person[truth[c["uid"]]].append(c)
    groups = [[_opt_outs(c) for c in cs] for cs in by_person.values() if len(cs) > 1]
    lone_marketing = [g for g in groups if sum(m for m, _, _ in g) == 1]
    assert len(lone_marketing) >= 50
    assert any(sum(s for _, s, _ in g) == 1 for g in groups), (
        "an SMS (transactional) opt-out on one duplicate"
    )
    assert any(sum(e for _, _, e in g) == 1 for g in groups), (
        "an email transactional opt-out on one duplicate"
    )
    flagged = sum(any(_opt_outs(c)) for c in parsed[1])
    assert flagged < 0.2 * len(parsed[1]), "most contacts are opted in: an opt-out is the exception"


def test_names_vary_in_case_order_titles_and_accents(
    corpus: tuple[list[str], dict[str, str]], parsed: tuple[list[dict[str, Any]], list[Contact]]
) -> None:
    truth = corpus[1]
    names = [c["name"] for c in parsed[1]]
    assert any(n and re.fullmatch(r"[^,]+, [^,]+", n) for n in names), "Last, First"
    assert any(n and re.match(r"(Mrs|Mr|Ms|Miss|Dr)\.? ", n) for n in names), "titles"
    assert any(n and n.isupper() for n in names) and any(n and n.islower() for n in names)
    assert any(n is None or n == "" for n in names), "missing names"
    by_person: dict[str, set[str]] = defaultdict(set)
    for c in parsed[1]:
        if c["name"]:
            by_person[truth[c["uid"]]].add(c["name"])
    assert any(
        any(
            a != b and unicodedata.normalize("NFKD", a) != a and _name_key(a) == _name_key(b)
            for a in ns
            for b in ns
        )
        for ns in by_person.values()
    ), "José and Jose for one person"


def test_duplicates_disagree_on_address_objects(
    corpus: tuple[list[str], dict[str, str]], parsed: tuple[list[dict[str, Any]], list[Contact]]
) -> None:
    truth = corpus[1]
    addresses: dict[str, set[str]] = defaultdict(set)
    for c in parsed[1]:
        if c["address"]:
            assert set(c["address"]) == {
                "addressLine1",
                "addressLine2",
                "city",
                "state",
                "postalCode",
                "country",
            }
            addresses[truth[c["uid"]]].add(c["address"]["addressLine1"])
    assert sum(len(a) > 1 for a in addresses.values()) >= 10
    assert any(c["address"] and c["address"]["city"] is None for c in parsed[1]), "partial addresses"


def test_most_same_location_duplicates_could_merge_automatically(
    corpus: tuple[list[str], dict[str, str]], keyed: dict[tuple[str, str], list[Contact]]
) -> None:
    truth = corpus[1]
    pairs: set[tuple[str, str]] = set()
    automatic: set[tuple[str, str]] = set()
    for members in keyed.values():
        one_person = len({truth[m["uid"]] for m in members}) == 1
        for a, b in itertools.combinations(members, 2):
            if truth[a["uid"]] != truth[b["uid"]]:
                continue
            pair = (min(a["uid"], b["uid"]), max(a["uid"], b["uid"]))
            pairs.add(pair)
            if one_person and _name_key(a["name"]) and _name_key(a["name"]) == _name_key(b["name"]):
                automatic.add(pair)
    assert len(pairs) > 500
    assert (
        0.60 <= len(automatic) / len(pairs) <= 0.90
    )  # ...and a minority not, for lack of a name or a nickname


def test_make_demo_corpus_command(tmp_path: Path) -> None:
    out = tmp_path / "cmd.ndjson"
    call_command("make_demo_corpus", str(out), people=120, seed=9, verbosity=0)
    truth = json.loads((tmp_path / "cmd.truth.json").read_text())
    assert truth["seed"] == 9 and truth["people"] == 120
    assert out.read_text().splitlines() == generate_corpus(120, 9)[0]
