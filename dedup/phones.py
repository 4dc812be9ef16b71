"""Phone normalization: every phone a person typed, turned into the E.164 natural key or a reason why not.

Only ``phonenumbers`` (libphonenumber) decides what a number is; there is no hand-written pattern for
number shapes here. The module only cleans the wrapping people put around numbers (``tel:`` URIs,
Unicode digits, a trunk ``(0)`` after the country code) before handing the text to the library.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberFormat

ERR_PARSE = "ERR_DEDUP_001"
ERR_NOT_VALID = "ERR_DEDUP_002"
ERROR_NAMES = {ERR_PARSE: "phone_parse_failed", ERR_NOT_VALID: "phone_not_valid"}

# Longest input worth handing to the parser; libphonenumber itself rejects anything over 250.
MAX_INPUT_LENGTH = 250

# "+61 (0)412 …": the trunk prefix written after the country code must not be dialled.
_TRUNK_AFTER_CC = re.compile(r"^(\+\d{1,3})[\s.\-]*\(0\)")


@dataclass(frozen=True, slots=True)
class PhoneResult:
    """The outcome of normalizing one phone value.

    A valid result has ``e164`` (also the ``natural_key``), ``national``, ``country`` and maybe an
    ``extension`` kept apart from the key. An invalid one has ``code`` (``ERR_DEDUP_001`` or
    ``ERR_DEDUP_002``) and a human ``reason``.
    """

    raw: str
    valid: bool
    e164: str | None = None
    national: str | None = None
    country: str | None = None
    extension: str | None = None
    code: str | None = None
    reason: str | None = None

    @property
    def natural_key(self) -> str | None:
        """The key contacts are matched on: the E.164 string of a valid number."""
        return self.e164

    @property
    def error_name(self) -> str | None:
        """The short name of the error code (``phone_parse_failed`` / ``phone_not_valid``)."""
        return ERROR_NAMES.get(self.code or "")

    def as_dict(self) -> dict[str, object]:
        """The JSON shape printed by ``manage.py normalize_phone --json``."""
        if self.valid:
            out: dict[str, object] = {
                "valid": True,
                "e164": self.e164,
                "national": self.national,
                "country": self.country,
                "natural_key": self.natural_key,
            }
            if self.extension:
                out["extension"] = self.extension
            return out
        return {"valid": False, "code": self.code, "error": self.error_name, "reason": self.reason}


def clean_phone_text(raw: str) -> str:
    """Undo the wrapping around a typed number without judging the number itself.

    Folds Unicode digits (Arabic-Indic, full-width …) to ASCII, strips a ``tel:`` scheme and its
    parameters, drops surrounding space and a trunk ``(0)`` written after the country code.
    """
    if raw.isascii():
        # NFKC and the digit folding leave ASCII as it is; skipping them halves the cost of a
        # plain number (tests/test_phones_fast.py checks both paths agree).
        text = raw.strip()
    else:
        text = unicodedata.normalize("NFKC", raw)
        text = "".join(str(unicodedata.digit(ch)) if ch.isdigit() and not ch.isascii() else ch for ch in text)
        text = text.strip()
    if text[:4].lower() == "tel:":
        text = text[4:]
        # RFC 3966 parameters (";ext=12" is the only one that matters) follow the number.
        number, _, params = text.partition(";")
        ext = ""
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "ext" and value.strip():
                ext = value.strip()
        text = number.strip() + (f" ext. {ext}" if ext else "")
    return _TRUNK_AFTER_CC.sub(r"\1 ", text) if "(0)" in text else text


def _invalid(raw: str, code: str, reason: str) -> PhoneResult:
    return PhoneResult(raw=raw, valid=False, code=code, reason=reason)


class PhoneKey(NamedTuple):
    """What the index keeps of a phone: its E.164 key and extension, or the error code and reason."""

    e164: str | None
    extension: str
    code: str
    reason: str


@lru_cache(maxsize=65_536)
def phone_key(raw: str, region: str = "AU") -> PhoneKey:
    """``normalize_phone`` reduced to what indexing needs (same verdict, same key, same reason).

    Skips the national format and the number's own region, which only people read: at a million
    contacts that is a third of the normalization time. The cache is small on purpose (a worker
    process sees most spellings once).
    """
    outcome = _parse(raw, region)
    if isinstance(outcome, PhoneResult):
        return PhoneKey(None, "", outcome.code or "", outcome.reason or "")
    return PhoneKey(phonenumbers.format_number(outcome, PhoneNumberFormat.E164), outcome.extension or "", "", "")


@lru_cache(maxsize=262_144)
def normalize_phone(raw: str, region: str = "AU") -> PhoneResult:
    """Normalize one phone value typed at a location whose country is ``region``.

    Never raises: any string gives either a valid result keyed by E.164 or an invalid one with
    ``ERR_DEDUP_001 phone_parse_failed`` (not a phone number at all) or ``ERR_DEDUP_002
    phone_not_valid`` (parses, but no such number is allocated; often the wrong region setting).
    Results are cached because the same spellings recur across a corpus.
    """
    outcome = _parse(raw, region)
    if isinstance(outcome, PhoneResult):
        return outcome
    return PhoneResult(
        raw=raw,
        valid=True,
        e164=phonenumbers.format_number(outcome, PhoneNumberFormat.E164),
        national=phonenumbers.format_number(outcome, PhoneNumberFormat.NATIONAL),
        country=phonenumbers.region_code_for_number(outcome),
        extension=outcome.extension or None,
    )


def _parse(raw: str, region: str) -> PhoneNumber | PhoneResult:
    """The valid number ``raw`` is, or the invalid result saying why not."""
    if not isinstance(raw, str):
        return _invalid(str(raw), ERR_PARSE, "the value is not text")
    region = (region or "").upper()
    if len(raw) > MAX_INPUT_LENGTH:
        return _invalid(raw, ERR_PARSE, f"longer than {MAX_INPUT_LENGTH} characters")
    text = clean_phone_text(raw)
    if not text:
        return _invalid(raw, ERR_PARSE, "empty")
    try:
        number = phonenumbers.parse(text, region if region in phonenumbers.SUPPORTED_REGIONS else None)
    except NumberParseException as exc:
        return _invalid(raw, ERR_PARSE, _parse_reason(exc, region))
    if not phonenumbers.is_valid_number(number):
        hint = (
            f"is not an allocated number for region {region}; if it was typed for another country, "
            "check the location's country or write it with its +country code"
        )
        if not phonenumbers.is_possible_number(number):
            hint = f"has the wrong length for a number in {phonenumbers.region_code_for_number(number) or region}"
        return _invalid(raw, ERR_NOT_VALID, f"parses but {hint}")
    return number


def _parse_reason(exc: NumberParseException, region: str) -> str:
    reasons = {
        NumberParseException.INVALID_COUNTRY_CODE: (
            f"no valid country code, and it is not a national number of {region or 'an unknown region'}"
        ),
        NumberParseException.NOT_A_NUMBER: "does not look like a phone number",
        NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
        NumberParseException.TOO_SHORT_NSN: "too short to be a phone number",
        NumberParseException.TOO_LONG: "too long to be a phone number",
    }
    return reasons.get(exc.error_type, "could not be parsed")


def normalize_email(raw: str) -> str | None:
    """The natural key of an email channel: trimmed and lower-cased; ``None`` when nothing is left."""
    key = unicodedata.normalize("NFKC", raw).strip().lower()
    return key if "@" in key else None


def mask_phone(value: str | None) -> str:
    """A phone fit for logs: only the last three digits survive (``+614•••••678`` style)."""
    if not value:
        return ""
    digits = [ch for ch in value if ch.isdigit()]
    if len(digits) <= 4:
        return "•" * len(digits)
    return f"{value[:3]}•••{''.join(digits[-3:])}"


def mask_email(value: str | None) -> str:
    """An email fit for logs: first letter of the local part and the domain."""
    if not value:
        return ""
    local, _, domain = value.partition("@")
    return f"{local[:1]}•••@{domain}" if domain else "•••"
