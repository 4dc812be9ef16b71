"""Making exported cells safe to open in a spreadsheet (CSV injection).

Excel, LibreOffice and Google Sheets run a cell as a formula when its text starts with ``=``, ``+``, ``-``
or ``@``; they skip leading blanks and control characters before deciding, and some read the fullwidth
forms (``＝``) as the ASCII ones. A cell that starts with a tab, carriage return or line feed is also
refused as the start of a formula by OWASP's guidance. Every CSV the product writes passes each cell
through :func:`neutralize_cell`, which prefixes an apostrophe: the spreadsheet then shows the text as
typed, and the apostrophe itself is not displayed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

FORMULA_STARTS = frozenset("=+-@")
# Characters that may open a cell and that a spreadsheet reads past, or treats as a formula start.
CONTROL_STARTS = frozenset("\t\r\n")


def _skippable(char: str) -> bool:
    # Blanks (Zs, and the ASCII/Unicode whitespace), control characters (Cc) and invisible format
    # characters (Cf: zero-width space, BOM, direction marks) do not change what a spreadsheet sees.
    return char.isspace() or unicodedata.category(char) in {"Cc", "Cf"}


def is_formula_like(value: str) -> bool:
    """Would a spreadsheet read this cell as a formula (or the start of one)?"""
    if not value:
        return False
    if value[0] in CONTROL_STARTS:
        return True
    for char in value:
        if _skippable(char):
            continue
        return unicodedata.normalize("NFKC", char)[:1] in FORMULA_STARTS
    return False


def neutralize_cell(value: str) -> str:
    """The cell as inert text: an apostrophe before anything a spreadsheet would run as a formula.

    Lossless: the result is either ``value`` or ``"'" + value``.
    """
    if is_formula_like(value):
        return "'" + value
    return value


def neutralize_row(cells: Iterable[str]) -> list[str]:
    """Every cell of a CSV row, neutralized."""
    return [neutralize_cell(cell) for cell in cells]
