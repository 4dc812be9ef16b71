"""Item 15 of issue 12: the best-formed spelling of one name, and common short forms are not a conflict."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dedup.names import (
    NameRelation,
    best_spelling,
    is_short_form_of,
    name_relation,
    names_conflict,
    normalize_name,
    spelling_quality,
)
from dedup.records import MemberRecord
from dedup.scoring import CONFLICTING_NAMES, NAME_UNCONFIRMED, PARTIAL_NAME, assess_cluster, score_pair

# Name words of plain letters, with an accented variant: ("maria", "maría").
_WORDS = [("maria", "maría"), ("ines", "inés"), ("francois", "françois"), ("jose", "josé"), ("zoe", "zoë"),
          ("garcia", "garcía"), ("nunez", "núñez"), ("murphy", "murphy"), ("zhang", "zhang"), ("bjork", "björk"),
          ("lefevre", "lefèvre"), ("pena", "peña"), ("chen", "chen"), ("muller", "müller")]  # fmt: skip
word_pair = st.sampled_from(_WORDS)


def _title(word: str) -> str:
    return word[:1].upper() + word[1:]


@given(first=word_pair, last=word_pair)
def test_the_well_formed_spelling_wins_over_every_sloppy_one(first: tuple[str, str], last: tuple[str, str]) -> None:
    assume(first[0] != last[0])
    good = f"{_title(first[1])} {_title(last[1])}"
    sloppy = [
        f"{first[1]} {last[1]}",  # all lower case
        f"{first[1]} {last[1]}".upper(),  # all capitals
        f"{last[1].upper()}, {_title(first[1])}",  # LAST, First
        f"{_title(first[0])} {_title(last[0])}",  # accents stripped
        f"{_title(last[1])}, {_title(first[1])}",  # Last, First
        f"  {_title(first[1])}   {_title(last[1])} ",  # untidy spacing (tidied, so equal to good)
    ]
    for survivor in sloppy:
        assert best_spelling([survivor, *sloppy, good]) == good
        assert best_spelling([survivor, good]) == good


@given(names=st.lists(st.text(max_size=30), max_size=6))
def test_the_result_spells_the_first_usable_name(names: list[str]) -> None:
    best = best_spelling(names)
    usable = [n for n in names if normalize_name(n)]
    if not usable:
        assert best is None
        return
    assert best is not None
    assert normalize_name(best) == normalize_name(usable[0])
    # It is one of the given spellings (tidied), and none that competed is better formed.
    assert best in {" ".join(n.split()) for n in usable}
    rivals = [n for n in usable if normalize_name(n) == normalize_name(usable[0])]
    assert all(spelling_quality(best) >= spelling_quality(" ".join(n.split())) for n in rivals)


@given(names=st.lists(st.sampled_from(["inés murphy", "Ines Murphy", "INÉS MURPHY", "Murphy, Inés", "Inés Murphy"]),
                      min_size=1, max_size=5))
def test_choosing_again_changes_nothing(names: list[str]) -> None:
    best = best_spelling(names)
    assert best is not None
    assert best_spelling([best, *names]) == best
    assert best_spelling([*names, best]) == best


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["inés murphy", "Inés Murphy"], "Inés Murphy"),
        (["ZHANG, François", "François Zhang"], "François Zhang"),
        (["Ines Murphy", "Inés Murphy"], "Inés Murphy"),
        (["Maria Garcia", "M Garcia", "María García"], "María García"),  # "M Garcia" is not the same name
        (["Maria Garcia", "Jose Garcia"], "Maria Garcia"),  # another person's name never competes
        (["", "Unknown", "GARCÍA, María", "María García"], "María García"),
        (["Ludwig van Beethoven", "LUDWIG VAN BEETHOVEN"], "Ludwig van Beethoven"),
        (["Seán O'Brien", "sean obrien", "SEAN O'BRIEN"], "Seán O'Brien"),
        (["John Smith, Jr", "JOHN SMITH JR"], "John Smith, Jr"),  # a comma before a suffix is not "Last, First"
        (["Ｍａｒｉａ Ｇａｒｃｉａ", "Maria Garcia"], "Maria Garcia"),  # full-width letters are a typing accident
        (["王小明", "王小明 "], "王小明"),  # a script without case is well formed as it is
        (["Maria Garcia", "Maria Garcia"], "Maria Garcia"),
        ([], None),
        (["", "  ", "N/A"], None),
    ],
)
def test_examples(names: list[str], expected: str | None) -> None:
    assert best_spelling(names) == expected


def test_on_a_tie_the_first_spelling_is_kept() -> None:
    assert best_spelling(["Garcia Maria", "Maria Garcia"]) == "Garcia Maria"
    assert best_spelling(["Maria Garcia", "Garcia Maria"]) == "Maria Garcia"


# --- short forms ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Jen Murphy", "Jennifer Murphy"),
        ("Bob Smith", "Robert Smith"),
        ("Bob Smith", "Rob Smith"),  # two short forms of one name
        ("Liz Taylor", "TAYLOR, Elizabeth"),
        ("Mike Chen", "Michael Chen"),
        ("Kate Ryan", "Katherine Ryan"),
        ("Pat Kelly", "Patricia Kelly"),
        ("Pat Kelly", "Patrick Kelly"),
        ("Jen M", "Jennifer Murphy"),  # a short form and an initial together
    ],
)
def test_a_common_short_form_is_not_a_conflict(a: str, b: str) -> None:
    assert name_relation(a, b) is NameRelation.COMPATIBLE
    assert name_relation(b, a) is NameRelation.COMPATIBLE
    assert not names_conflict(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Patricia Kelly", "Patrick Kelly"),  # each is its own full name
        ("Alexander Chen", "Alexandra Chen"),
        ("Bob Smith", "Robert Smith Jr"),  # father and son: the suffix still decides
        ("Jen Murphy", "Jessica Murphy"),
        ("Bob Smith", "Bill Smith"),
    ],
)
def test_different_given_names_still_conflict(a: str, b: str) -> None:
    assert name_relation(a, b) is NameRelation.DIFFERENT


@given(a=st.sampled_from(["jen", "bob", "liz", "pat", "alex", "mike"]), b=st.text(max_size=12))
def test_short_forms_are_symmetric(a: str, b: str) -> None:
    assert is_short_form_of(a, b) == is_short_form_of(b, a)
    assert not is_short_form_of(a, a)


def _member(uid: str, name: str) -> MemberRecord:
    return MemberRecord.build(uid=uid, location_uid="loc_sydney", updated_at=datetime(2025, 3, 1, tzinfo=UTC), name=name,
                              phone_channels=[("0412 345 678", "+61412345678")], raw_emails=["jm@example.com"],
                              tags=["VIP"])


def test_scoring_a_short_form_is_a_partial_name_kept_for_a_person() -> None:
    """Not a household conflict, no name weight, and the cluster is reviewed rather than merged by itself."""
    pair = score_pair(_member("ct_1", "Jen Murphy"), _member("ct_2", "Jennifer Murphy"))
    assert PARTIAL_NAME in pair.reasons and not pair.conflict
    assert pair.score == pytest.approx(0.80)
    verdict = assess_cluster([_member("ct_1", "Jen Murphy"), _member("ct_2", "Jennifer Murphy")])
    assert CONFLICTING_NAMES not in verdict.reasons
    assert NAME_UNCONFIRMED in verdict.reasons and not verdict.auto_merge


def test_accents_count_in_nfd_and_nfc_alike() -> None:
    nfc = unicodedata.normalize("NFC", "Inés Murphy")
    nfd = unicodedata.normalize("NFD", "Inés Murphy")
    assert spelling_quality(nfc)[2] == spelling_quality(nfd)[2] == 1
