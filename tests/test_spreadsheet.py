"""CSV injection: every cell a spreadsheet would run as a formula is exported as inert text, losslessly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dedup.spreadsheet import is_formula_like, neutralize_cell, neutralize_row

# What a spreadsheet reads past before deciding whether a cell is a formula.
BLANKS = st.text(alphabet=st.sampled_from([" ", "\t", "\n", "\r", "\u00a0", "\u3000", "\u200b", "\ufeff", "\x0b"]))
TRIGGERS = st.sampled_from(["=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20"])


def test_the_known_forms_are_neutralized() -> None:
    for dangerous in ("=1+1", "+61412345678", "-2", "@SUM(A1)", "\tx", "\rx", "\nx", " =1+1", "  @A1",
                      "\t=cmd|' /C calc'!A0", "\n-1", "\u00a0=1", "\uff1d1+1", "\ufeff=1"):
        assert neutralize_cell(dangerous) == "'" + dangerous, repr(dangerous)
    for inert in ("merge.patched", "user:alice", "", "   ", "{\"a\": 1}", "ct_1 =x", "'=quoted"):
        assert neutralize_cell(inert) == inert, repr(inert)


@given(BLANKS, TRIGGERS, st.text())
def test_a_trigger_behind_any_blanks_is_neutralized(blanks: str, trigger: str, rest: str) -> None:
    cell = blanks + trigger + rest
    assert neutralize_cell(cell) == "'" + cell


@given(st.text())
def test_neutralizing_is_lossless_idempotent_and_leaves_nothing_formula_like(value: str) -> None:
    safe = neutralize_cell(value)
    assert safe in (value, "'" + value)
    assert not is_formula_like(safe)
    assert neutralize_cell(safe) == safe
    # Only what needed it changed.
    assert (safe != value) == is_formula_like(value)


@given(st.lists(st.text(), max_size=8))
def test_a_row_is_neutralized_cell_by_cell(cells: list[str]) -> None:
    assert neutralize_row(cells) == [neutralize_cell(c) for c in cells]
