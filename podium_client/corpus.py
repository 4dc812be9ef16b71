"""A deterministic demo corpus in Podium's v4 export shape, with the mess of real life and the truth.

The export is v4 NDJSON (location lines, then contacts exactly as `GET /v4/contacts` lists them). The
truth maps every contact uid to the person it really is, so detection can be measured. The mess:
one customer typed many ways (a phone in many spellings, names in varied case, order, titles and
accents, differing address objects); households and reassigned numbers, i.e. different people
sharing a phone; people at two locations, both as two contacts and as one contact belonging to two
locations; junk phones; email-only contacts; opt-outs that sit on one duplicate only, in Podium's
consent model (a channel not opted in for marketing at its location; rarely a
`transactionalOptedOutAt`); tags and attributes with organization-wide uids; most contacts with one to
three conversations. A fourth, small location has no country in Podium (an admin must give its
region).

Every uid is a UUID derived from the seed, so the same (people, seed) always gives the same file.
Generation streams in chunks, so a million people never sit in memory as JSON at once (only the
truth mapping does, when the caller asks for it).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from podium_client.emulator.shapes import DEFAULT_ORGANIZATION_UID, dumps, location_export_line

ORGANIZATION_UID = DEFAULT_ORGANIZATION_UID
SYDNEY = "75562888-442f-5caf-9cb9-ea22e5119437"
BURLEIGH = "85926449-1a82-5628-8a7f-6cfbd0887951"
AUCKLAND = "10a86364-2021-5999-b7f0-b914fb8a000f"
#: A small location Podium has no country for: the product must ask an admin for its region.
POPUP = "07abb140-b169-5b59-a5ad-1360dcba1477"


def _location(
    uid: str, name: str, display: str, road: str | None, city: str | None, state: str | None,
    postal: str | None, country: str | None, country_name: str | None, phone: str | None,
) -> dict[str, Any]:  # fmt: skip
    address = ", ".join(p for p in (road, city, state, postal) if p) or None
    return {
        "uid": uid, "name": name, "displayName": display, "organizationUid": ORGANIZATION_UID,
        "archived": False, "archivedAt": None, "address": address,
        "addressDetails": {
            "houseNumber": None, "road": road, "unit": None, "city": city, "state": state,
            "stateLongName": None, "postalCode": postal, "country": country, "countryLongName": country_name,
        },
        "phoneNumber": phone, "podiumPhoneNumber": phone,
        "createdAt": "2019-06-01T00:00:00Z", "updatedAt": "2024-02-01T00:00:00Z",
    }  # fmt: skip


#: The demo organization's locations, as `GET /v4/locations` lists them.
LOCATIONS: tuple[dict[str, Any], ...] = (
    _location(SYDNEY, "Sydney CBD", "Podium Demo Sydney", "George St", "Sydney", "NSW", "2000", "AU", "Australia",
              "+61290000000"),
    _location(BURLEIGH, "Burleigh Heads", "Podium Demo Burleigh", "Gold Coast Hwy", "Burleigh Heads", "QLD",
              "4220", "AU", "Australia", "+61755000000"),
    _location(AUCKLAND, "Auckland", "Podium Demo Auckland", "Queen St", "Auckland", None, "1010", "NZ",
              "New Zealand", "+6493000000"),
    _location(POPUP, "Pop-up Van", "Podium Demo Pop-up", None, None, None, None, None, None, None),
)  # fmt: skip
#: Where the people of each location really live (the pop-up is in Australia; Podium does not say so).
_COUNTRY = {SYDNEY: "AU", BURLEIGH: "AU", AUCKLAND: "NZ", POPUP: "AU"}
_HOME_WEIGHTS = ((SYDNEY, 43), (BURLEIGH, 29), (AUCKLAND, 24), (POPUP, 4))
_PLACES = {
    SYDNEY: ("Sydney", "NSW", "2000"), BURLEIGH: ("Burleigh Heads", "QLD", "4220"),
    AUCKLAND: ("Auckland", None, "1010"), POPUP: ("Byron Bay", "NSW", "2481"),
}  # fmt: skip
TAG_DESCRIPTIONS = {"vip": "Very important customer", "wholesale": "Trade account"}

FIRST_NAMES = (
    "Maria", "José", "Chloé", "Zoë", "Renée", "Liam", "Noah", "Olivia", "Charlotte", "Amelia", "Isla", "Mia",
    "Ava", "Grace", "Ella", "Jack", "William", "Oliver", "Thomas", "James", "Lucas", "Henry", "Leo", "Hugo",
    "Mateo", "Aroha", "Mere", "Tane", "Wiremu", "Ngaio", "Priya", "Arjun", "Wei", "Mei", "Hiroshi", "Yuki",
    "Sofía", "Inés", "François", "Søren", "Anaïs", "Siobhán", "Seán", "Niamh", "Connor", "Hannah", "Lily",
    "Ruby", "Sophie", "Emily", "Jessica", "Sarah", "Daniel", "Samuel", "Benjamin", "Joshua", "Matthew",
    "Andrew", "Michael", "David", "Robert", "Elizabeth", "Katherine", "Jennifer", "Margaret", "Patricia",
    "Richard", "Joseph", "Christopher", "Anthony", "Nicholas", "Alexander", "Jonathan", "Timothy", "Rēwi",
)  # fmt: skip
LAST_NAMES = (
    "Garcia", "Smith", "Jones", "Williams", "Brown", "Wilson", "Taylor", "Nguyen", "Johnson", "Martin",
    "White", "Anderson", "Thompson", "Walker", "Harris", "Lee", "Ryan", "Robinson", "Kelly", "King", "Davis",
    "Wright", "Evans", "Roberts", "Green", "Hall", "Wood", "Jackson", "Clarke", "Patel", "Singh", "Chen",
    "Wang", "Li", "Zhang", "Kumar", "Murphy", "O'Brien", "Müller", "Núñez", "Peña", "Ngata", "Parata",
    "Walsh", "McDonald", "MacKenzie", "Fitzgerald", "Björk", "Søndergaard", "Dubois", "Lefèvre", "Tūhoe",
    "García", "Nakamura", "Rossi", "Novak", "Kowalski", "Hughes", "Edwards", "Mitchell", "Campbell",
)  # fmt: skip
NICKNAMES = {
    "Robert": "Bob", "Elizabeth": "Liz", "Katherine": "Kate", "William": "Bill", "Michael": "Mike",
    "James": "Jim", "Jennifer": "Jen", "Margaret": "Peggy", "Patricia": "Trish", "Richard": "Rick",
    "Joseph": "Joe", "Christopher": "Chris", "Anthony": "Tony", "Nicholas": "Nick", "Alexander": "Alex",
    "Jonathan": "Jon", "Timothy": "Tim", "Thomas": "Tom", "Daniel": "Dan", "Samuel": "Sam",
    "Benjamin": "Ben", "Matthew": "Matt", "Andrew": "Andy", "Joshua": "Josh", "Jessica": "Jess",
    "Olivia": "Liv", "Charlotte": "Charlie", "Amelia": "Millie", "Hannah": "Annie", "Sarah": "Sally",
}  # fmt: skip
TITLES = ("Mr", "Mrs", "Ms", "Miss", "Dr.", "Dr", "Mr.", "Mrs.")
TAGS = ("vip", "newsletter", "walk-in", "online", "loyalty", "referral", "wholesale", "review-sent")
EMAIL_DOMAINS = ("example.com", "example.net", "example.org", "mail.example.com")
JUNK_PHONES = (
    "n/a", "N/A", "123", "none", "call me", "0412", "12345", "04123456789012", "abc", "0000", "-", "tba",
    "unknown", "04l2 345 678", "phone", "99999999999999999", "+61", "ask at desk",
)  # fmt: skip
STREETS = ("George St", "Pitt St", "Gold Coast Hwy", "Queen St", "Ponsonby Rd", "James St", "Elizabeth St")

_AU_MOBILE_SPACE = 40_000_000  # 04[0-3]xxxxxxx: all valid AU mobiles
_NZ_MOBILE_SPACE = 30_000_000  # 02[127]xxxxxxx
_AU_LANDLINE_SPACE = 10_000_000
_NZ_LANDLINE_SPACE = 1_000_000
_STRIDE = 1_000_003  # coprime with every space above, so index -> number is a permutation

_T_START = 1_609_459_200  # 2021-01-01
_T_END = 1_759_190_400  # 2025-09-30
_T_OLD_START = 1_546_300_800  # 2019-01-01, for the previous owners of reassigned numbers


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _ascii_slug(text: str) -> str:
    return "".join(c for c in _strip_accents(text).lower() if c.isalnum())


def _ts(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# --- phone spellings: each takes the national digits ("0412345678") -------------------------------


def _au_mobile_national(n: str) -> list[str]:
    s = n[1:]
    return [
        f"{n[:4]} {n[4:7]} {n[7:]}",
        f"({n[:2]}) {n[2:6]}-{n[6:]}",
        n,
        f"{n[:4]}-{n[4:7]}-{n[7:]}",
        *_au_mobile_international(n),
        f"+61 ({n[0]}){s[:3]} {s[3:6]} {s[6:]}",
    ]


def _au_mobile_international(n: str) -> list[str]:
    s = n[1:]
    return [f"+61 {s[:3]} {s[3:6]} {s[6:]}", f"+61{s}", f"tel:+61-{s[:3]}-{s[3:6]}-{s[6:]}"]


def _nz_mobile_national(n: str) -> list[str]:
    return [f"{n[:3]} {n[3:6]} {n[6:]}", n, f"{n[:3]}-{n[3:6]}-{n[6:]}", f"({n[:3]}) {n[3:6]} {n[6:]}"] + (
        _nz_mobile_international(n)
    )


def _nz_mobile_international(n: str) -> list[str]:
    s = n[1:]
    return [f"+64 {s[:2]} {s[2:5]} {s[5:]}", f"+64{s}", f"tel:+64-{s[:2]}-{s[2:5]}-{s[5:]}"]


def _au_landline_national(n: str) -> list[str]:
    return [f"({n[:2]}) {n[2:6]} {n[6:]}", f"{n[:2]} {n[2:6]} {n[6:]}", n, f"+61 {n[1]} {n[2:6]} {n[6:]}"]


def _au_landline_international(n: str) -> list[str]:
    return [f"+61 {n[1]} {n[2:6]} {n[6:]}", f"+61{n[1:]}"]


def _nz_landline_national(n: str) -> list[str]:
    return [f"{n[:2]} {n[2:5]} {n[5:]}", f"({n[:2]}) {n[2:5]} {n[5:]}", n, f"+64 {n[1]} {n[2:5]} {n[5:]}"]


def _nz_landline_international(n: str) -> list[str]:
    return [f"+64 {n[1]} {n[2:5]} {n[5:]}", f"+64{n[1:]}"]


@dataclass(slots=True)
class _Phone:
    national: str
    country: str
    national_spellings: Callable[[str], list[str]]
    international_spellings: Callable[[str], list[str]]

    def spell(self, rng: random.Random, at_country: str) -> str:
        if at_country == self.country:
            options = self.national_spellings(self.national)
        else:
            # Staff abroad type a foreign number with its country code, or it would not parse.
            options = self.international_spellings(self.national)
        text = rng.choice(options)
        if rng.random() < 0.08:
            text = rng.choice((" ", "  ", "\t")) + text + rng.choice(("", " ", "  "))
        return text


@dataclass(slots=True)
class _Person:
    pid: str
    first: str
    last: str
    home: str
    phone: _Phone
    email: str | None
    tags: tuple[str, ...]
    birthday: str | None
    address: dict[str, Any] | None
    second_phone: _Phone | None = None


@dataclass(slots=True)
class _Spec:
    """A contact before its uid and its place in the file are known."""

    person: str
    locations: list[str]
    name: str | None
    channels: list[tuple[str, str]]  # (type, identifier) in the order Podium shows them
    tags: list[str]
    attributes: list[tuple[str, str]]
    address: dict[str, Any] | None
    created: int
    updated: int
    conversations: int
    marketing_out: bool = False
    sms_out: bool = False
    email_out: bool = False
    uid: str = ""
    conversation_uids: list[str] = field(default_factory=list)


@dataclass
class CorpusSummary:
    """What was generated: counts of people, contacts and each kind of mess."""

    people: int
    seed: int
    contacts: int = 0
    kinds: Counter[str] = field(default_factory=Counter)


class _Generator:
    def __init__(self, people: int, seed: int) -> None:
        self.people = people
        self.seed = seed
        self.rng = random.Random(seed)
        # Uids come from their own stream, so the mess does not depend on how many uids were drawn.
        self.uid_rng = random.Random(f"podium-demo-corpus-uids:{seed}")
        self.next_person = 1
        self.kinds: Counter[str] = Counter()
        offsets = random.Random(seed ^ 0x5EED)
        self._offsets = [offsets.randrange(1 << 30) for _ in range(6)]
        self._phone_index = 0
        self._second_index = 0
        namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"podium-demo-corpus:{seed}")
        self.tag_uids = {label: str(uuid.uuid5(namespace, f"tag:{label}")) for label in TAGS}
        self.birthday_uid = str(uuid.uuid5(namespace, "attribute:birthday"))

    def new_uid(self) -> str:
        return str(uuid.UUID(int=self.uid_rng.getrandbits(128), version=4))

    # --- people -------------------------------------------------------------------------------------

    def _new_pid(self) -> str:
        pid = f"p_{self.next_person:07d}"
        self.next_person += 1
        return pid

    def _mobile(self, country: str) -> _Phone:
        i = self._phone_index
        self._phone_index += 1
        if country == "NZ":
            n = (i * _STRIDE + self._offsets[0]) % _NZ_MOBILE_SPACE
            national = "0" + ("21", "22", "27")[n // 10_000_000] + f"{n % 10_000_000:07d}"
            return _Phone(national, "NZ", _nz_mobile_national, _nz_mobile_international)
        n = (i * _STRIDE + self._offsets[1]) % _AU_MOBILE_SPACE
        national = f"04{n // 10_000_000}{n % 10_000_000:07d}"
        return _Phone(national, "AU", _au_mobile_national, _au_mobile_international)

    def _landline(self, home: str) -> _Phone:
        i = self._second_index
        self._second_index += 1
        if _COUNTRY[home] == "NZ":
            n = (i * _STRIDE + self._offsets[2]) % _NZ_LANDLINE_SPACE
            return _Phone(f"093{n:06d}", "NZ", _nz_landline_national, _nz_landline_international)
        n = (i * _STRIDE + self._offsets[3]) % _AU_LANDLINE_SPACE
        national = f"029{n:07d}" if home == SYDNEY else f"0755{n % 1_000_000:06d}"
        return _Phone(national, "AU", _au_landline_national, _au_landline_international)

    def _email(self, first: str, last: str, pid: str) -> str:
        rng = self.rng
        local = rng.choice(
            (f"{_ascii_slug(first)}.{_ascii_slug(last)}", f"{_ascii_slug(first)[:1]}{_ascii_slug(last)}")
        )
        return f"{local}{int(pid[2:])}@{rng.choice(EMAIL_DOMAINS)}"

    def _home_address(self, home: str) -> dict[str, Any]:
        rng = self.rng
        city, state, postal = _PLACES[home]
        return {
            "addressLine1": f"{rng.randint(1, 400)} {rng.choice(STREETS)}",
            "addressLine2": rng.choice((None, None, None, f"Unit {rng.randint(1, 30)}")),
            "city": city, "state": state, "postalCode": postal, "country": _COUNTRY[home],
        }  # fmt: skip

    def _person(self, home: str, last: str | None = None, phone: _Phone | None = None) -> _Person:
        rng = self.rng
        pid = self._new_pid()
        first = rng.choice(FIRST_NAMES)
        last = last or rng.choice(LAST_NAMES)
        person = _Person(
            pid,
            first,
            last,
            home,
            phone or self._mobile(_COUNTRY[home]),
            self._email(first, last, pid) if rng.random() < 0.65 else None,
            tuple(rng.sample(TAGS, rng.choice((0, 1, 1, 2, 3)))),
            f"{rng.randint(1950, 2006)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            if rng.random() < 0.3
            else None,
            self._home_address(home),
        )
        if rng.random() < 0.05:
            person.second_phone = self._landline(home) if rng.random() < 0.6 else self._mobile(_COUNTRY[home])
        return person

    # --- names --------------------------------------------------------------------------------------

    def _name(self, p: _Person) -> str | None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.05:
            self.kinds["missing_name"] += 1
            return rng.choice((None, ""))
        if roll < 0.10:
            self.kinds["nickname"] += 1
            nick = NICKNAMES.get(p.first)
            return f"{nick} {p.last}" if nick else p.first
        first, last = p.first, p.last
        style = rng.random()
        if style < 0.40:
            return f"{first} {last}"
        if style < 0.50:
            self.kinds["name_case"] += 1
            return f"{first} {last}".lower()
        if style < 0.58:
            self.kinds["name_case"] += 1
            return f"{first} {last}".upper()
        if style < 0.70:
            self.kinds["name_order"] += 1
            return rng.choice((f"{last}, {first}", f"{last.upper()}, {first}"))
        if style < 0.80:
            self.kinds["name_title"] += 1
            return f"{rng.choice(TITLES)} {first} {last}"
        if style < 0.92:
            plain = _strip_accents(f"{first} {last}")
            if plain != f"{first} {last}":
                self.kinds["name_accent"] += 1
            return plain
        self.kinds["name_spacing"] += 1
        return f" {first}  {last} "

    # --- contacts -----------------------------------------------------------------------------------

    def _address(self, p: _Person) -> dict[str, Any] | None:
        rng = self.rng
        if p.address is None or rng.random() >= 0.25:
            return None
        address = dict(p.address)
        roll = rng.random()
        if roll < 0.2:
            # Moved house, or a typo: duplicates of one person disagree on the address.
            self.kinds["differing_address"] += 1
            address["addressLine1"] = f"{rng.randint(1, 400)} {rng.choice(STREETS)}"
        elif roll < 0.4:
            self.kinds["partial_address"] += 1
            address.update(
                {"addressLine2": None, "city": None, "state": None, "postalCode": None, "country": None}
            )
        return address

    def _contact(self, p: _Person, locations: list[str], created_from: int, created_to: int) -> _Spec:
        rng = self.rng
        at_country = _COUNTRY[locations[0]]
        channels: list[tuple[str, str]] = []
        roll = rng.random()
        if roll < 0.025:
            self.kinds["junk_phone"] += 1
            channels.append(("PHONE", rng.choice(JUNK_PHONES)))
            if rng.random() < 0.3:
                channels.append(("PHONE", p.phone.spell(rng, at_country)))
        elif roll > 0.02 + 0.025:
            channels.append(("PHONE", p.phone.spell(rng, at_country)))
        else:
            self.kinds["no_phone"] += 1
        if p.second_phone is not None and rng.random() < 0.6:
            self.kinds["two_phones"] += 1
            channels.append(("PHONE", p.second_phone.spell(rng, at_country)))
        if p.email and rng.random() < 0.7:
            email = p.email
            if rng.random() < 0.2:
                local, _, domain = email.partition("@")
                email = f"{local.capitalize()}@{domain.capitalize()}"
            channels.append(("EMAIL", email))
        if channels and all(kind == "EMAIL" for kind, _ in channels):
            self.kinds["email_only"] += 1
        if len(channels) > 1 and rng.random() < 0.3:
            rng.shuffle(channels)
        created = rng.randint(created_from, created_to)
        updated = min(created + rng.randint(0, 300 * 86400), _T_END + 30 * 86400)
        tags = [t for t in p.tags if rng.random() < 0.8]
        attributes = [("birthday", p.birthday)] if p.birthday and rng.random() < 0.6 else []
        conversations = rng.choices((0, 1, 2, 3), weights=(15, 45, 25, 15))[0]
        return _Spec(
            p.pid, locations, self._name(p), channels, tags, attributes, self._address(p), created, updated,
            conversations,
        )  # fmt: skip

    def _contacts_of(
        self, p: _Person, specs: list[_Spec], start: int = _T_START, end: int = _T_END
    ) -> list[int]:
        rng = self.rng
        count = rng.choices((1, 2, 3, 4, 5), weights=(60, 22, 11, 5, 2))[0]
        others = [loc["uid"] for loc in LOCATIONS if loc["uid"] != p.home]
        two_locations = rng.random() < 0.04
        mine: list[int] = []
        for i in range(count):
            locations = [p.home]
            if two_locations and i == 0:
                # One contact the person's two locations share (Podium lists it once, with both).
                self.kinds["multi_location"] += 1
                locations.append(rng.choice(others))
            specs.append(self._contact(p, locations, start, end))
            mine.append(len(specs) - 1)
        if rng.random() < 0.05:
            self.kinds["cross_location"] += 1
            specs.append(self._contact(p, [rng.choice(others)], start, end))
            mine.append(len(specs) - 1)
        if count > 1:
            self.kinds["duplicated_people"] += 1
        return mine

    def _mess_up(self, specs: list[_Spec], mine: list[int]) -> None:
        """Opt-outs that sit on one duplicate only (in Podium's consent model when written out)."""
        rng = self.rng

        def one(kind: str | None) -> _Spec | None:
            holders = [specs[i] for i in mine if any(kind is None or k == kind for k, _ in specs[i].channels)]
            return rng.choice(holders) if holders else None

        if len(mine) > 1:
            if rng.random() < 0.2 and (spec := one(None)) is not None:
                spec.marketing_out = True
                self.kinds["opt_out_on_one_duplicate"] += 1
            if rng.random() < 0.08 and (spec := one("PHONE")) is not None:
                spec.sms_out = True
                self.kinds["opt_out_on_one_duplicate"] += 1
                self.kinds["transactional_opt_out"] += 1
            if rng.random() < 0.04 and (spec := one("EMAIL")) is not None:
                spec.email_out = True
                self.kinds["transactional_opt_out"] += 1
        elif rng.random() < 0.05 and specs[mine[0]].channels:
            specs[mine[0]].marketing_out = True

    # --- groups -------------------------------------------------------------------------------------

    def _group(self, specs: list[_Spec], truth_people: list[str], remaining: int) -> int:
        """Add one group of people (a single person, a household, or a reassigned number)."""
        rng = self.rng
        home = rng.choices([h for h, _ in _HOME_WEIGHTS], weights=[w for _, w in _HOME_WEIGHTS])[0]
        roll = rng.random()
        if roll < 0.05 and remaining >= 2:
            size = min(remaining, rng.choice((2, 2, 3)))
            first_person = self._person(home)
            members = [first_person]
            while len(members) < size:
                member = self._person(home, last=first_person.last, phone=first_person.phone)
                if member.first in {m.first for m in members}:
                    # A household shares a phone, not a first name.
                    self.next_person -= 1
                    continue
                if rng.random() < 0.5:
                    member.email = first_person.email
                if rng.random() < 0.6:
                    member.tags = first_person.tags
                member.address = first_person.address
                members.append(member)
            self.kinds["households"] += 1
            for member in members:
                self._mess_up(specs, self._contacts_of(member, specs))
            truth_people.extend(m.pid for m in members)
            return len(members)
        if roll < 0.07 and remaining >= 2:
            old = self._person(home)
            new = self._person(home, phone=old.phone)
            while (new.first, new.last) == (old.first, old.last):
                new.first = rng.choice(FIRST_NAMES)
            self.kinds["reassigned_numbers"] += 1
            self._mess_up(specs, self._contacts_of(old, specs, _T_OLD_START, _T_START - 86400))
            self._mess_up(specs, self._contacts_of(new, specs))
            truth_people.extend((old.pid, new.pid))
            return 2
        person = self._person(home)
        self._mess_up(specs, self._contacts_of(person, specs))
        truth_people.append(person.pid)
        return 1

    def chunks(self, chunk_people: int = 2000) -> Iterator[list[_Spec]]:
        """Yield the contacts chunk by chunk, each chunk in export (uid) order."""
        remaining = self.people
        while remaining > 0:
            specs: list[_Spec] = []
            made: list[str] = []
            target = min(chunk_people, remaining)
            while len(made) < target:
                self._group(specs, made, target - len(made))
            remaining -= len(made)
            for spec in specs:
                spec.uid = self.new_uid()
                spec.conversation_uids = [self.new_uid() for _ in range(spec.conversations)]
            # Export order is uid order: random uids scatter a person's contacts through the file.
            specs.sort(key=lambda sp: sp.uid)
            yield specs

    # --- v4 JSON --------------------------------------------------------------------------------------

    def contact_json(self, spec: _Spec) -> str:
        created, updated = _ts(spec.created), _ts(spec.updated)
        opted_in = list(spec.locations)
        channels = []
        marketing_target = spec.channels[0] if spec.marketing_out and spec.channels else None
        sms_done = email_done = False
        for kind, identifier in spec.channels:
            out_at = None
            if kind == "PHONE" and spec.sms_out and not sms_done:
                out_at, sms_done = _ts((spec.created + spec.updated) // 2), True
            elif kind == "EMAIL" and spec.email_out and not email_done:
                out_at, email_done = _ts((spec.created + spec.updated) // 2), True
            channels.append({
                "type": kind, "identifier": identifier, "label": None,
                "marketingOptedInLocationUids": [] if (kind, identifier) == marketing_target else list(opted_in),
                "transactionalOptedOutAt": out_at, "createdAt": created, "updatedAt": updated,
            })  # fmt: skip
        data: dict[str, Any] = {
            "uid": spec.uid,
            "name": spec.name,
            "locations": [{"uid": loc} for loc in spec.locations],
            "organization": {"uid": ORGANIZATION_UID},
            "phoneNumbers": [i for k, i in spec.channels if k == "PHONE"],
            "emails": [i for k, i in spec.channels if k == "EMAIL"],
            "channels": channels,
            "tags": [
                {"uid": self.tag_uids[t], "label": t, "description": TAG_DESCRIPTIONS.get(t)}
                for t in spec.tags
            ],
            "attributes": [
                {
                    "uid": self.birthday_uid,
                    "label": label,
                    "value": value,
                    "dataType": "STRING",
                    "ownerResource": {"type": "ORGANIZATION", "uid": ORGANIZATION_UID},
                }  # fmt: skip
                for label, value in spec.attributes
            ],
            "address": spec.address,
            "conversations": [{"uid": u} for u in spec.conversation_uids],
            "createdAt": created,
            "updatedAt": updated,
        }
        return dumps(data)


def iter_corpus(
    people: int, seed: int, summary: CorpusSummary | None = None
) -> Iterator[tuple[str, str | None]]:
    """Yield `(ndjson_line, person_id)` pairs: location lines first (person None), then contacts.

    The same (people, seed) always yields the same lines. When `summary` is given, it is filled in
    as generation proceeds (complete once the iterator is exhausted).
    """
    if people < 0:
        raise ValueError("people must be >= 0")
    for loc in LOCATIONS:
        yield location_export_line(loc), None
    gen = _Generator(people, seed)
    contacts = 0
    for chunk in gen.chunks():
        for spec in chunk:
            contacts += 1
            yield gen.contact_json(spec), spec.person
    if summary is not None:
        summary.contacts = contacts
        summary.kinds = gen.kinds


def _uid_of_line(line: str) -> str:
    # The uid is the first field of every contact line: cheaper than parsing the line.
    return line[8 : line.index('"', 8)]


def generate_corpus(people: int, seed: int) -> tuple[list[str], dict[str, str]]:
    """The whole corpus in memory: (NDJSON lines without newlines, {contact uid: person id}).

    For large corpora prefer `write_corpus`, which streams to disk.
    """
    lines: list[str] = []
    truth: dict[str, str] = {}
    for line, person in iter_corpus(people, seed):
        lines.append(line)
        if person is not None:
            truth[_uid_of_line(line)] = person
    return lines, truth


def truth_path_for(path: str | os.PathLike[str]) -> Path:
    """Where the ground truth of an export lives: `OUT.ndjson` -> `OUT.truth.json`."""
    p = Path(path)
    stem = p.name[: -len(".ndjson")] if p.name.endswith(".ndjson") else p.name
    return p.with_name(stem + ".truth.json")


def write_corpus(
    path: str | os.PathLike[str], people: int, seed: int, truth_path: str | os.PathLike[str] | None = None
) -> CorpusSummary:
    """Stream a corpus to `path` and its truth to `truth_path` (default `OUT.truth.json`).

    The truth file is `{"seed": S, "people": N, "personOf": {contactUid: personId}}`. Both files are
    written to temporary names and renamed into place, so an interrupted run leaves no half corpus.
    """
    out = Path(path)
    truth_out = Path(truth_path) if truth_path is not None else truth_path_for(out)
    summary = CorpusSummary(people=people, seed=seed)
    with _atomic(out) as fh, _atomic(truth_out) as th:
        th.write(f'{{"seed": {json.dumps(seed)}, "people": {people}, "personOf": {{')
        first = True
        for line, person in iter_corpus(people, seed, summary):
            fh.write(line)
            fh.write("\n")
            if person is not None:
                th.write(("" if first else ", ") + f'"{_uid_of_line(line)}": "{person}"')
                first = False
        th.write("}}\n")
    return summary


class _atomic:
    """Write to a temporary file beside `path`; rename it into place only on success."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp: str | None = None
        self._fh: TextIO | None = None

    def __enter__(self) -> TextIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._fh = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        return self._fh

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        assert self._fh is not None and self._tmp is not None
        self._fh.close()
        if exc_type is None:
            os.chmod(self._tmp, 0o644)
            os.replace(self._tmp, self.path)
        else:
            Path(self._tmp).unlink(missing_ok=True)
