"""Name normalization and comparison (pure; no database)."""

from __future__ import annotations

import itertools
import unicodedata

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dedup.names import (
    PLACEHOLDERS,
    TITLES,
    NameRelation,
    name_relation,
    names_conflict,
    names_match,
    normalize_name,
)

# Words that are a name part: not a title, not part of a placeholder such as "no name".
_NOT_A_NAME_PART = TITLES | {token for placeholder in PLACEHOLDERS for token in placeholder}
ascii_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=8).filter(
    lambda w: w not in _NOT_A_NAME_PART
)


@pytest.mark.parametrize(
    "raw",
    [
        "Maria Garcia",
        "GARCIA, Maria",
        "Mrs. María  García",
        "  maria   garcia  ",
        "Garcia Maria",
        "Dr Maria Garcia",
        "García, Mrs María",
        "Ｍａｒｉａ Ｇａｒｃｉａ",  # full-width forms from some keyboards
        "Maria\tGarcia\n",
        "Maria Garcia (Ms)",
    ],
)
def test_spellings_of_one_name_share_a_canonical_form(raw: str) -> None:
    assert normalize_name(raw) == "garcia maria"


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "\t\n", "Mrs.", "Dr", "Unknown", "N/A", "n/a", "Customer", "- - -", "+61 412 345 678", "0"],
)
def test_blank_junk_and_placeholders_are_no_name(raw: str) -> None:
    assert normalize_name(raw) == ""


def test_punctuation_inside_names() -> None:
    assert normalize_name("O'Brien, Seán") == normalize_name("Sean OBrien") == "obrien sean"
    assert normalize_name("O’Brien") == "obrien"  # typographic apostrophe
    assert normalize_name("Ana Garcia-Lopez") == normalize_name("Ana Garcia Lopez")


def test_titles_only_drop_as_whole_tokens() -> None:
    # "Drew" starts with "dr", "Misty" with "mis": only exact title tokens go.
    assert normalize_name("Drew Misty") == "drew misty"
    assert normalize_name("Prof. Sir Drew") == "drew"


def test_generational_suffixes_are_kept() -> None:
    assert normalize_name("John Smith Jr.") == "john jr smith"
    assert normalize_name("John Smith Jr.") != normalize_name("John Smith")


def test_normalize_is_cached() -> None:
    normalize_name.cache_clear()
    normalize_name("Maria Garcia")
    normalize_name("Maria Garcia")
    assert normalize_name.cache_info().hits >= 1


@given(st.text())
def test_never_raises_and_is_idempotent(raw: str) -> None:
    out = normalize_name(raw)
    assert isinstance(out, str)
    assert normalize_name(out) == out
    assert out == out.strip()
    assert "  " not in out
    tokens = out.split()
    assert tokens == sorted(set(tokens))


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=30))
def test_canonical_form_has_no_case_or_accents_left(raw: str) -> None:
    out = normalize_name(raw)
    assert out == out.casefold()
    assert not any(unicodedata.combining(ch) for ch in out)


@given(st.lists(ascii_word, min_size=1, max_size=4), st.randoms())
def test_token_order_does_not_matter(words: list[str], rnd: object) -> None:
    shuffled = list(words)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert normalize_name(" ".join(words)) == normalize_name(" ".join(shuffled))


@given(st.lists(ascii_word, min_size=2, max_size=3))
def test_last_comma_first_equals_first_last(words: list[str]) -> None:
    first, last = " ".join(words[:-1]), words[-1]
    assert normalize_name(f"{last}, {first}") == normalize_name(f"{first} {last}")


@given(st.lists(ascii_word, min_size=1, max_size=3), st.sampled_from(sorted(TITLES)), st.booleans())
def test_a_title_changes_nothing(words: list[str], title: str, dot: bool) -> None:
    name = " ".join(words)
    assert normalize_name(f"{title.title()}{'.' if dot else ''} {name}") == normalize_name(name)


@given(st.lists(ascii_word, min_size=1, max_size=3))
def test_case_and_accents_do_not_matter(words: list[str]) -> None:
    name = " ".join(words)
    accented = "".join(ch + "\u0301" if ch in "aeiou" else ch for ch in name)  # add acute accents
    assert normalize_name(name.upper()) == normalize_name(name) == normalize_name(accented)


# --- comparison -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "relation"),
    [
        ("Maria Garcia", "GARCIA, Maria", NameRelation.SAME),
        ("Maria Garcia", "Jose Garcia", NameRelation.DIFFERENT),  # household: shared surname
        ("Maria Garcia", "Maria Lopez", NameRelation.DIFFERENT),
        ("M Garcia", "Maria Garcia", NameRelation.COMPATIBLE),  # initial: could be her, not proof
        ("M. Garcia", "Maria Garcia", NameRelation.COMPATIBLE),
        ("J Garcia", "Maria Garcia", NameRelation.DIFFERENT),
        ("Maria", "Maria Garcia", NameRelation.COMPATIBLE),
        ("Maria Garcia", "Maria Garcia Lopez", NameRelation.COMPATIBLE),
        ("John Smith", "John Smith Jr", NameRelation.DIFFERENT),  # father and son
        ("John Smith Sr", "John Smith Jr", NameRelation.DIFFERENT),
        ("John Smith Jr", "Smith, John Jr.", NameRelation.SAME),
        ("M Maria", "Mario M", NameRelation.COMPATIBLE),  # needs a real matching, not greedy pairing
        ("Maria Garcia", "", NameRelation.MISSING),
        ("Unknown", "Maria Garcia", NameRelation.MISSING),
        ("", "", NameRelation.MISSING),
    ],
)
def test_name_relation(a: str, b: str, relation: NameRelation) -> None:
    assert name_relation(a, b) is relation
    assert name_relation(b, a) is relation
    assert names_conflict(a, b) is (relation is NameRelation.DIFFERENT)
    assert names_match(a, b) is (relation is NameRelation.SAME)


names = st.one_of(
    st.text(max_size=20),
    st.lists(
        st.sampled_from(["maria", "m", "garcia", "jose", "j", "lopez", "jr", "Mrs", ","]), max_size=4
    ).map(" ".join),
)


@given(names, names)
def test_relation_is_symmetric(a: str, b: str) -> None:
    assert name_relation(a, b) is name_relation(b, a)


@given(names)
def test_a_name_never_conflicts_with_itself_and_missing_is_no_evidence(a: str) -> None:
    assert not names_conflict(a, a)
    assert not names_conflict(a, "")
    assert not names_conflict("", a)
    assert name_relation(a, a) in (NameRelation.SAME, NameRelation.MISSING)


@given(st.lists(ascii_word, min_size=2, max_size=3, unique=True), ascii_word)
def test_changing_a_given_name_is_a_conflict(words: list[str], other: str) -> None:
    assume(other not in words)
    rest = words[1:]
    assert names_conflict(" ".join(words), " ".join([other, *rest]))


def test_matching_handles_many_tokens_without_recursion() -> None:
    long_a = " ".join(
        f"n{''.join(p)}" for p in itertools.islice(itertools.product("abcdefgh", repeat=4), 2000)
    )
    assert name_relation(long_a, long_a + " zz") is NameRelation.COMPATIBLE
