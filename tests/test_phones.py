"""The phone normalizer: the spec's spellings, edge cases, and that no string can make it raise."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from hypothesis import given, settings
from hypothesis import strategies as st

from dedup.phones import ERR_NOT_VALID, ERR_PARSE, mask_email, mask_phone, normalize_email, normalize_phone

SPEC_SPELLINGS = ["+61 412 345 678", "0412 345 678", "(04) 1234-5678", "+61412345678"]


@pytest.mark.parametrize("raw", SPEC_SPELLINGS)
def test_the_four_spellings_of_one_mobile_share_a_key(raw: str) -> None:
    result = normalize_phone(raw, "AU")
    assert result.valid
    assert result.natural_key == result.e164 == "+61412345678"
    assert result.country == "AU"
    assert result.national == "0412 345 678"


@pytest.mark.parametrize(
    "raw",
    [
        "  0412 345 678  ",
        "tel:+61-412-345-678",
        "TEL:+61412345678",
        "+61 (0)412 345 678",
        "+61(0)412345678",
        "٠٤١٢٣٤٥٦٧٨",  # Arabic-Indic digits
        "０４１２ ３４５ ６７８",  # full-width digits
        "0412.345.678",
    ],
)
def test_wrappings_people_type_are_undone(raw: str) -> None:
    assert normalize_phone(raw, "AU").e164 == "+61412345678"


def test_extension_is_kept_apart_from_the_key() -> None:
    plain = normalize_phone("02 9876 5432", "AU")
    with_ext = normalize_phone("02 9876 5432 ext. 21", "AU")
    uri = normalize_phone("tel:+61298765432;ext=21", "AU")
    assert plain.natural_key == with_ext.natural_key == uri.natural_key == "+61298765432"
    assert with_ext.extension == uri.extension == "21"
    assert plain.extension is None


def test_region_decides_national_numbers() -> None:
    assert normalize_phone("021 234 5678", "NZ").e164 == "+64212345678"
    assert normalize_phone("+64 21 234 5678", "AU").e164 == "+64212345678"
    # The same national digits are a Sydney landline at an Australian location: the location's
    # country, not the text, decides.
    assert normalize_phone("021 234 5678", "AU").e164 == "+61212345678"
    us = normalize_phone("0412 345 678", "US")
    assert not us.valid and us.code in (ERR_PARSE, ERR_NOT_VALID)


@pytest.mark.parametrize("raw", ["", "   ", "n/a", "call me", "+", "--", "\x00", "tel:"])
def test_unparseable_values_are_err_001(raw: str) -> None:
    result = normalize_phone(raw, "AU")
    assert not result.valid
    assert result.code == ERR_PARSE and result.error_name == "phone_parse_failed"
    assert result.reason
    assert result.natural_key is None


@pytest.mark.parametrize("raw", ["123", "0412 345", "+61 1234", "0000 000 000", "0412 345 678 999 999"])
def test_parseable_but_impossible_values_are_err_002(raw: str) -> None:
    result = normalize_phone(raw, "AU")
    assert not result.valid
    assert result.code == ERR_NOT_VALID and result.error_name == "phone_not_valid"
    assert result.natural_key is None


def test_overlong_input_is_refused_without_parsing() -> None:
    result = normalize_phone("1" * 10_000, "AU")
    assert not result.valid and result.code == ERR_PARSE


def test_results_are_cached() -> None:
    normalize_phone.cache_clear()
    normalize_phone("0412 345 678", "AU")
    normalize_phone("0412 345 678", "AU")
    info = normalize_phone.cache_info()
    assert info.hits >= 1 and info.misses == 1


@settings(max_examples=400, deadline=None)
@given(raw=st.text(max_size=60), region=st.sampled_from(["AU", "NZ", "US", "GB", "", "ZZ", "au"]))
def test_never_raises_on_any_string(raw: str, region: str) -> None:
    result = normalize_phone(raw, region)
    assert result.valid == (result.e164 is not None)
    if result.valid:
        assert result.e164 is not None and result.e164.startswith("+")
        assert normalize_phone(result.e164, "AU").e164 == result.e164
    else:
        assert result.code in (ERR_PARSE, ERR_NOT_VALID) and result.reason


@settings(max_examples=200, deadline=None)
@given(digits=st.text(alphabet="0123456789 -().+", min_size=1, max_size=25))
def test_valid_keys_are_stable_under_reformatting(digits: str) -> None:
    first = normalize_phone(digits, "AU")
    if first.valid:
        assert first.national is not None and first.country is not None
        # The national spelling belongs to the number's own country (an international number typed
        # at an Australian location reads back nationally only in its own region).
        assert normalize_phone(first.national, first.country).e164 == first.e164


def test_email_keys_are_trimmed_and_lower_cased() -> None:
    assert normalize_email("  Maria@Example.COM ") == "maria@example.com"
    assert normalize_email("not an email") is None


def test_masks_hide_most_of_the_value() -> None:
    assert "345" not in mask_phone("+61412345678") and mask_phone("+61412345678").endswith("678")
    assert mask_email("maria@example.com") == "m•••@example.com"


def test_cli_json_for_one_valid_number(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("normalize_phone", "(04) 1234-5678", "--region", "AU", "--json")
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "valid": True,
        "e164": "+61412345678",
        "national": "0412 345 678",
        "country": "AU",
        "natural_key": "+61412345678",
    }


def test_cli_exits_1_when_any_number_is_invalid(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        call_command("normalize_phone", "0412 345 678", "n/a", "--region", "AU", "--json")
    assert exit_info.value.code == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["valid"] is True
    assert lines[1] == {
        "valid": False,
        "code": "ERR_DEDUP_001",
        "error": "phone_parse_failed",
        "reason": "does not look like a phone number",
    }


def test_cli_exits_0_when_all_valid(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("normalize_phone", *SPEC_SPELLINGS, "--region", "AU")
    out = capsys.readouterr().out
    assert [line.split("\t")[1] for line in out.splitlines()] == ["+61412345678"] * 4


def test_cli_rejects_an_unknown_region() -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="unknown region"):
        call_command("normalize_phone", "0412 345 678", "--region", "XX")
