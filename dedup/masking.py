"""How another location's customer is shown to someone not granted that location: recognisably masked.

Whether a value is masked is decided in ``dedup.access`` (``masks_location``); this module only says what
the masked value looks like. The shapes keep just enough for a reviewer to see that two members plausibly
hold the same value (the initials of a name, the start and the end of a number, an email's domain)
without reading the customer's details:

* ``"Maria Garcia"`` → ``"M••• G•••"``
* ``"+61 412 345 678"`` → ``"+61 4•• ••• •78"``
* ``"maria@example.com"`` → ``"m•••@example.com"``

Pure functions; they never raise on any string.
"""

from __future__ import annotations

MASK = "•"
HIDDEN = MASK * 3

# Digits kept at each end of a phone number; a number shorter than this many digits is masked whole.
_PHONE_HEAD = 3
_PHONE_TAIL = 2
_PHONE_MIN_DIGITS = 7


def mask_name(name: str) -> str:
    """Each word's first letter, then ``•••``: "Maria Garcia" → "M••• G•••"."""
    words = name.split()
    return " ".join(word[0] + HIDDEN for word in words) if words else ""


def mask_phone(phone: str) -> str:
    """The first three and last two digits kept, every other digit masked, punctuation as typed.

    "+61 412 345 678" → "+61 4•• ••• •78"; a short or unreadable number is masked whole.
    """
    digits = sum(ch.isdigit() for ch in phone)
    if digits < _PHONE_MIN_DIGITS:
        return HIDDEN if phone.strip() else ""
    out: list[str] = []
    seen = 0
    for ch in phone:
        if ch.isdigit():
            seen += 1
            keep = seen <= _PHONE_HEAD or seen > digits - _PHONE_TAIL
            out.append(ch if keep else MASK)
        elif ch.isalpha():
            out.append(MASK)  # "ext", or letters typed into a phone field, say nothing useful
        else:
            out.append(ch)
    return "".join(out)


def mask_email(email: str) -> str:
    """The first character of the mailbox and the whole domain: "maria@example.com" → "m•••@example.com"."""
    text = email.strip()
    local, at, domain = text.rpartition("@")
    if not at or not local:
        return HIDDEN if text else ""
    return local[0] + HIDDEN + "@" + domain


def mask_text(value: str) -> str:
    """A free-text value (an address, an attribute) hidden entirely."""
    return HIDDEN if value.strip() else ""


def _key(value: str) -> str:
    return " ".join(value.split()).casefold()


class Revealer:
    """Shows a value in full only when a member the viewer may read holds it; masks it otherwise.

    A merge preview or a write-back mixes every member's values; ``seen`` holds those of the members in
    the viewer's locations (names, phones as typed and as E.164, emails, addresses, attribute values),
    compared case- and space-insensitively. ``reveal_all`` is for a viewer who sees every member.
    """

    def __init__(self, seen: set[str] | frozenset[str] = frozenset(), *, reveal_all: bool = False) -> None:
        self.reveal_all = reveal_all
        self.seen = frozenset(_key(v) for v in seen if v)

    def shows(self, value: str) -> bool:
        return self.reveal_all or not value or _key(value) in self.seen

    def name(self, value: str) -> str:
        return value if self.shows(value) else mask_name(value)

    def phone(self, value: str) -> str:
        return value if self.shows(value) else mask_phone(value)

    def email(self, value: str) -> str:
        return value if self.shows(value) else mask_email(value)

    def text(self, value: str) -> str:
        return value if self.shows(value) else mask_text(value)

    def key(self, value: str) -> str:
        """A natural key: an email when it holds ``@``, else an E.164 phone."""
        return self.email(value) if "@" in value else self.phone(value)
