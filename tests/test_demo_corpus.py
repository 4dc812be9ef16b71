"""The demo corpus: deterministic, consistent with its truth, and carrying every kind of real-life mess."""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from collections import defaultdict
from pathlib import Path

import phonenumbers
import pytest
from django.core.management import call_command

from podium_client import Contact, Location
from podium_client.corpus import generate_corpus, truth_path_for, write_corpus
from podium_client.types import parse_export_line

PEOPLE = 3000
SEED = 77


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], dict[str, str]]:
    return generate_corpus(PEOPLE, SEED)


@pytest.fixture(scope="module")
def parsed(corpus: tuple[list[str], dict[str, str]]) -> tuple[list[Location], list[Contact]]:
    locations: list[Location] = []
    contacts: list[Contact] = []
    for line in corpus[0]:
        obj = parse_export_line(line)
        (locations if isinstance(obj, Location) else contacts).append(obj)  # type: ignore[arg-type]
    return locations, contacts


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


_TITLES = {"mr", "mrs", "ms", "miss", "dr", "mx"}


def _name_key(name: str | None) -> str | None:
    """A deliberately simple normalizer (case, accents, titles, "Last, First"); no nicknames."""
    if not name or not name.strip():
        return None
    text = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c)).lower()
    tokens = [t.strip(".") for t in re.split(r"[\s,]+", text) if t.strip(".")]
    return " ".join(sorted(t for t in tokens if t not in _TITLES))


@pytest.fixture(scope="module")
def keyed(parsed: tuple[list[Location], list[Contact]]) -> dict[tuple[str, str], list[Contact]]:
    """Live contacts by (location, E.164 of each valid phone)."""
    locations, contacts = parsed
    region = {loc.uid: loc.country for loc in locations}
    by_key: dict[tuple[str, str], list[Contact]] = defaultdict(list)
    for c in contacts:
        if c.is_deleted:
            continue
        for key in {_e164(p, region[c.location_uid]) for p in c.phones} - {None}:
            assert key is not None
            by_key[(c.location_uid, key)].append(c)
    return by_key


def test_same_seed_same_corpus_other_seed_other_corpus(corpus: tuple[list[str], dict[str, str]]) -> None:
    assert generate_corpus(PEOPLE, SEED) == corpus
    assert generate_corpus(PEOPLE, SEED + 1)[0] != corpus[0]


def test_locations_and_contacts_follow_the_contract(
    corpus: tuple[list[str], dict[str, str]], parsed: tuple[list[Location], list[Contact]]
) -> None:
    locations, contacts = parsed
    assert [(loc.uid, loc.name, loc.country) for loc in locations] == [
        ("loc_sydney", "Sydney CBD", "AU"),
        ("loc_burleigh", "Burleigh Heads", "AU"),
        ("loc_auckland", "Auckland", "NZ"),
    ]
    assert all(json.loads(line)["object"] == "location" for line in corpus[0][:3])
    # Lines are exactly the contract's JSON (what Contact.to_wire gives back).
    assert all(json.loads(line) == c.to_wire() for line, c in zip(corpus[0][3:], contacts, strict=True))
    assert all(re.fullmatch(r"ct_\d{7}_[0-9a-f]{6}", c.uid) for c in contacts)
    assert len({c.uid for c in contacts}) == len(contacts)
    assert all(c.updated_at >= c.created_at for c in contacts)


def test_truth_covers_every_contact_and_every_person(
    corpus: tuple[list[str], dict[str, str]], parsed: tuple[list[Location], list[Contact]]
) -> None:
    truth = corpus[1]
    contacts = parsed[1]
    assert set(truth) == {c.uid for c in contacts}
    assert len(set(truth.values())) == PEOPLE
    by_uid = {c.uid: c for c in contacts}
    merged = [c for c in contacts if c.merged_into_uid]
    assert merged
    for c in merged:
        assert c.is_deleted and c.merged_into_uid in by_uid
        assert truth[c.merged_into_uid] == truth[c.uid]


def test_write_corpus_streams_the_same_corpus_and_truth(tmp_path: Path) -> None:
    out = tmp_path / "demo.ndjson"
    summary = write_corpus(out, 200, 5)
    lines, truth = generate_corpus(200, 5)
    assert out.read_text().splitlines() == lines
    truth_file = truth_path_for(out)
    assert truth_file == tmp_path / "demo.truth.json"
    assert json.loads(truth_file.read_text()) == {"seed": 5, "people": 200, "personOf": truth}
    assert summary.contacts == len(truth) and summary.kinds["duplicated_people"] > 0


def test_one_mobile_in_many_spellings(parsed: tuple[list[Location], list[Contact]]) -> None:
    phones = [p for c in parsed[1] if c.location_uid != "loc_auckland" for p in c.phones]
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
        (members for members in keyed.values() if len({truth[m.uid] for m in members}) == 1),
        key=lambda members: len({p for m in members for p in m.phones}),
    )
    assert len({p for m in widest for p in m.phones}) >= 3


def test_nz_numbers_in_national_format_at_auckland(parsed: tuple[list[Location], list[Contact]]) -> None:
    phones = [p for c in parsed[1] if c.location_uid == "loc_auckland" for p in c.phones]
    assert any(re.fullmatch(r"02[127] \d{3} \d{4}", p) for p in phones)
    assert all(_e164(p, "NZ") is None or not p.strip().startswith("04") for p in phones)


def _people_sharing(
    keyed: dict[tuple[str, str], list[Contact]], truth: dict[str, str]
) -> list[list[Contact]]:
    return [m for m in keyed.values() if len({truth[c.uid] for c in m}) > 1]


def test_households_share_a_phone_with_different_first_names(
    corpus: tuple[list[str], dict[str, str]], keyed: dict[tuple[str, str], list[Contact]]
) -> None:
    truth = corpus[1]
    households = 0
    for members in _people_sharing(keyed, truth):
        named = [(truth[c.uid], _name_key(c.name)) for c in members if _name_key(c.name)]
        persons = {p for p, _ in named}
        if len(persons) > 1 and len({n for _, n in named}) > 1:
            lasts = [set(n.split()) for _, n in named]  # type: ignore[union-attr]
            if set.intersection(*lasts):
                households += 1
    assert households >= 20


def test_reassigned_numbers_belong_to_people_with_other_names(
    corpus: tuple[list[str], dict[str, str]], keyed: dict[tuple[str, str], list[Contact]]
) -> None:
    truth = corpus[1]
    reassigned = 0
    for members in _people_sharing(keyed, truth):
        names = {truth[c.uid]: _name_key(c.name) for c in members if _name_key(c.name)}
        token_sets = [set(n.split()) for n in names.values() if n]
        if len(token_sets) > 1 and not set.intersection(*token_sets):
            reassigned += 1
    assert reassigned >= 5


def test_same_customer_at_two_locations_gives_the_same_number(
    corpus: tuple[list[str], dict[str, str]], keyed: dict[tuple[str, str], list[Contact]]
) -> None:
    truth = corpus[1]
    locations_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    typed_abroad = False
    for (location, key), members in keyed.items():
        for c in members:
            locations_of[(truth[c.uid], key)].add(location)
            if location == "loc_auckland" and key.startswith("+61"):
                typed_abroad = True
    assert sum(len(locs) > 1 for locs in locations_of.values()) >= 20
    assert typed_abroad


def test_two_phones_junk_and_deleted_rows(parsed: tuple[list[Location], list[Contact]]) -> None:
    contacts = parsed[1]
    region = {"loc_sydney": "AU", "loc_burleigh": "AU", "loc_auckland": "NZ"}
    two = [c for c in contacts if len({_e164(p, region[c.location_uid]) for p in c.phones} - {None}) >= 2]
    junk = [p for c in contacts for p in c.phones if _e164(p, region[c.location_uid]) is None]
    assert len(two) >= 20
    assert len(junk) >= 30 and "n/a" in {j.lower() for j in junk}
    assert sum(c.is_deleted for c in contacts) >= 50
    assert any(not c.phones for c in contacts)


def test_opt_outs_sit_on_one_duplicate_only(
    corpus: tuple[list[str], dict[str, str]], parsed: tuple[list[Location], list[Contact]]
) -> None:
    truth = corpus[1]
    by_person: dict[str, list[Contact]] = defaultdict(list)
    for c in parsed[1]:
        by_person[truth[c.uid]].append(c)
    lone = [cs for cs in by_person.values() if len(cs) > 1 and sum(c.marketing_opt_out for c in cs) == 1]
    assert len(lone) >= 50
    assert any(sum(c.sms_opt_out for c in cs) == 1 for cs in by_person.values() if len(cs) > 1)


def test_names_vary_in_case_order_titles_and_accents(
    corpus: tuple[list[str], dict[str, str]], parsed: tuple[list[Location], list[Contact]]
) -> None:
    truth = corpus[1]
    names = [c.name for c in parsed[1]]
    assert any(n and re.fullmatch(r"[^,]+, [^,]+", n) for n in names), "Last, First"
    assert any(n and re.match(r"(Mrs|Mr|Ms|Miss|Dr)\.? ", n) for n in names), "titles"
    assert any(n and n.isupper() for n in names) and any(n and n.islower() for n in names)
    assert any(n is None or n == "" for n in names), "missing names"
    by_person: dict[str, set[str]] = defaultdict(set)
    for c in parsed[1]:
        if c.name:
            by_person[truth[c.uid]].add(c.name)
    assert any(
        any(
            a != b and unicodedata.normalize("NFKD", a) != a and _name_key(a) == _name_key(b)
            for a in ns
            for b in ns
        )
        for ns in by_person.values()
    ), "José and Jose for one person"


def test_most_same_location_duplicates_could_merge_automatically(
    corpus: tuple[list[str], dict[str, str]], keyed: dict[tuple[str, str], list[Contact]]
) -> None:
    truth = corpus[1]
    pairs: set[tuple[str, str]] = set()
    automatic: set[tuple[str, str]] = set()
    for members in keyed.values():
        one_person = len({truth[m.uid] for m in members}) == 1
        for a, b in itertools.combinations(members, 2):
            if truth[a.uid] != truth[b.uid]:
                continue
            pair = (min(a.uid, b.uid), max(a.uid, b.uid))
            pairs.add(pair)
            if one_person and _name_key(a.name) and _name_key(a.name) == _name_key(b.name):
                automatic.add(pair)
    assert len(pairs) > 500
    assert len(automatic) / len(pairs) >= 0.60
    # ...and a minority does not, for lack of a name or a nickname.
    assert len(automatic) / len(pairs) <= 0.90


def test_make_demo_corpus_command(tmp_path: Path) -> None:
    out = tmp_path / "cmd.ndjson"
    call_command("make_demo_corpus", str(out), people=120, seed=9, verbosity=0)
    truth = json.loads((tmp_path / "cmd.truth.json").read_text())
    assert truth["seed"] == 9 and truth["people"] == 120
    assert out.read_text().splitlines() == generate_corpus(120, 9)[0]
