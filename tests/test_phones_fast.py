"""The fast paths of phone normalization give exactly what the slow ones give."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from dedup.phones import _TRUNK_AFTER_CC, clean_phone_text, normalize_phone, phone_key

# Phone-like text: digits (ASCII and not), the punctuation people type, tel: URIs, trunk "(0)".
_PIECES = st.sampled_from(
    ["+", "61", "64", "0", "4", "12", " ", "-", ".", "(", ")", "(0)", "tel:", ";ext=", "ext.", "x", "٣", "１", " ", "\u00a0", "a"]
)
phone_text = st.one_of(st.lists(_PIECES, max_size=12).map("".join), st.text(max_size=30))
regions = st.sampled_from(["AU", "NZ", "US", "GB", "", "ZZ"])


def _slow_clean(raw: str) -> str:
    """``clean_phone_text`` without its ASCII shortcut (the definition the shortcut must match)."""
    text = unicodedata.normalize("NFKC", raw)
    text = "".join(str(unicodedata.digit(ch)) if ch.isdigit() and not ch.isascii() else ch for ch in text)
    text = text.strip()
    if text[:4].lower() == "tel:":
        text = text[4:]
        number, _, params = text.partition(";")
        ext = ""
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "ext" and value.strip():
                ext = value.strip()
        text = number.strip() + (f" ext. {ext}" if ext else "")
    return _TRUNK_AFTER_CC.sub(r"\1 ", text)


@settings(max_examples=600, deadline=None)
@given(phone_text)
def test_cleaning_takes_the_ascii_shortcut_without_changing_the_result(raw: str) -> None:
    assert clean_phone_text(raw) == _slow_clean(raw)


@settings(max_examples=600, deadline=None)
@given(phone_text, regions)
def test_the_index_key_is_normalize_phones_verdict(raw: str, region: str) -> None:
    full = normalize_phone(raw, region)
    lean = phone_key(raw, region)
    if full.valid:
        assert (lean.e164, lean.extension, lean.code) == (full.e164, full.extension or "", "")
    else:
        assert (lean.e164, lean.code, lean.reason) == (None, full.code, full.reason)


def test_known_spellings_agree() -> None:
    for raw, region in [("0412 345 678", "AU"), ("+61 (0)412 345 678", "NZ"), ("tel:+64-21-123-4567;ext=9", "AU"),
                        ("０４１２ ３４５ ６７８", "AU"), ("call me", "AU"), ("021 123 4567", "NZ"), ("  +1 650 253 0000 ", "")]:  # fmt: skip
        full, lean = normalize_phone(raw, region), phone_key(raw, region)
        assert lean.e164 == full.e164 and lean.code == (full.code or "")
    assert phone_key("0412 345 678", "AU").e164 == "+61412345678"
    assert phone_key("tel:+64-21-123-4567;ext=9", "AU").extension == "9"
