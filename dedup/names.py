"""Name normalization and comparison: is this the same person's name, a different person's, or unknown?

The canonical form (``normalize_name``) is the set of name tokens, sorted and joined by single spaces:

* case-folded, accents stripped (NFKD, combining marks dropped), compatibility forms folded
  (full-width letters, ligatures);
* apostrophes removed inside words ("O'Brien" = "OBrien"); every other punctuation mark, hyphens
  included, separates tokens ("Garcia-Lopez" = "Garcia Lopez");
* titles dropped wherever they appear, with or without a dot ("Mrs.", "Dr", "Prof");
* tokens without a single letter dropped (staff sometimes type the phone number into the name);
* placeholders that are not a name at all ("Unknown", "N/A", "Customer", "Guest") give "".

**Token order is canonicalized by sorting.** "Last, First", "First Last" and "LAST First" (the order
CRM exports and many cultures use) then all compare equal without guessing which token is the given
name; "Last, First" is thereby handled as well as by reordering around the comma, and also when the
comma is missing. The price is that "Lee Kim" equals "Kim Lee"; two different people sharing one phone
with exactly swapped names is far rarer than the same person typed in two orders, and a name match is
only 0.20 of the score, never the only evidence.

Generational suffixes (Jr, Sr, II, III, IV) are *kept*: a father and son on one home phone are exactly
the household case that must never merge automatically.
"""

from __future__ import annotations

import unicodedata
from enum import StrEnum
from functools import lru_cache

# Honorifics people type before (or after) a name; they say nothing about who the person is.
# "sr"/"jr" are deliberately absent (generational suffixes, see _GENERATIONAL), and so is the French
# "M." which cannot be told apart from an initial.
TITLES: frozenset[str] = frozenset(
    {
        "mr", "mrs", "ms", "miss", "mx", "mstr", "master", "dr", "doctor", "prof", "professor",
        "sir", "dame", "lady", "lord", "rev", "revd", "reverend", "fr", "pastor", "hon",
        "mme", "mlle", "herr", "frau", "sra", "srta", "sig", "sigra",
    }
)  # fmt: skip

_GENERATIONAL: frozenset[str] = frozenset({"jr", "junior", "sr", "senior", "ii", "iii", "iv"})

# Whole names that are placeholders, compared as token sets after titles are removed.
PLACEHOLDERS: frozenset[frozenset[str]] = frozenset(
    frozenset(p.split())
    for p in (
        "unknown", "n a", "na", "none", "null", "nil", "no name", "noname", "name", "customer",
        "guest", "anonymous", "anon", "test", "tbd", "unnamed", "unknown customer", "new customer",
        "walk in", "walkin",
    )
)  # fmt: skip

_APOSTROPHES = frozenset("'\u2019\u02bc\u2018`\u00b4")


def _fold(text: str) -> str:
    """Case-fold and strip accents; folding twice because case-folding can re-introduce marks."""
    out = text
    for _ in range(2):
        decomposed = unicodedata.normalize("NFKD", out.casefold())
        out = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return out


def _tokens(raw: str) -> list[str]:
    """Split a folded name into its meaningful tokens (titles and letterless tokens removed)."""
    chars: list[str] = []
    for ch in _fold(raw):
        if ch in _APOSTROPHES:
            continue
        # Spacing marks (category Mc, e.g. Devanagari vowel signs) are part of a word, not separators.
        if ch.isalnum() or unicodedata.category(ch).startswith("M"):
            chars.append(ch)
        else:
            chars.append(" ")
    return [tok for tok in "".join(chars).split() if tok not in TITLES and any(c.isalpha() for c in tok)]


@lru_cache(maxsize=65536)
def normalize_name(raw: str) -> str:
    """The canonical form of a person's name ("" when there is no usable name).

    "Maria Garcia", "GARCIA, Maria" and "Mrs. María  García" all give "garcia maria". Never raises on
    any string; idempotent (normalizing a canonical form returns it unchanged).
    """
    if not isinstance(raw, str):  # defensive: callers pass ORM values that may be None
        return ""
    tokens = _tokens(raw)
    token_set = frozenset(tokens)
    if not token_set or token_set in PLACEHOLDERS:
        return ""
    return " ".join(sorted(token_set))


class NameRelation(StrEnum):
    """How two names relate as evidence about whether two contacts are one person."""

    MISSING = "missing"  # at least one side has no usable name: no evidence either way
    SAME = "same"  # identical canonical forms
    COMPATIBLE = "compatible"  # could be one person ("M Garcia" / "Maria Garcia"), but not a match
    DIFFERENT = "different"  # two different people's names


def _compatible(a: str, b: str) -> bool:
    """Whether two tokens may denote the same name part: equal, or one is the initial of the other."""
    if a == b:
        return True
    if len(a) == 1 and b.startswith(a):
        return True
    return len(b) == 1 and a.startswith(b)


def _every_token_matched(short: list[str], long: list[str]) -> bool:
    """Whether each token of ``short`` can be paired with its own compatible token of ``long``.

    A bipartite matching (augmenting paths, iterative so a pathological 1,000-token "name" cannot
    overflow the stack); greedy pairing would wrongly fail on e.g. "M Maria" vs "Mario M".
    """
    adjacency = [[j for j, t in enumerate(long) if _compatible(s, t)] for s in short]
    owner_of_long: dict[int, int] = {}
    long_of_short: dict[int, int] = {}
    for start, options in enumerate(adjacency):
        if not options:
            return False
        came_from: dict[int, int] = {}  # long index -> short index that reached it
        frontier = [start]
        visited_short = {start}
        free: int | None = None
        while frontier and free is None:
            s = frontier.pop()
            for j in adjacency[s]:
                if j in came_from:
                    continue
                came_from[j] = s
                if j not in owner_of_long:
                    free = j
                    break
                nxt = owner_of_long[j]
                if nxt not in visited_short:
                    visited_short.add(nxt)
                    frontier.append(nxt)
        if free is None:
            return False
        j = free
        while True:  # flip the augmenting path back to its start
            s = came_from[j]
            previous = long_of_short.get(s)
            owner_of_long[j] = s
            long_of_short[s] = j
            if s == start:
                break
            assert previous is not None  # an interior short node on the path was matched
            j = previous
    return True


def name_relation(a: str, b: str) -> NameRelation:
    """Classify two names (raw or already normalized) as missing, same, compatible or different.

    Rules, chosen to be conservative because a false "same person" merges two customers:

    * either name empty after normalization -> MISSING (no evidence either way);
    * identical canonical forms -> SAME;
    * different generational suffixes (one "Jr", the other none or "Sr") -> DIFFERENT (father/son);
    * every token of the shorter name pairs with its own token of the longer one, equal or as an
      initial ("M Garcia" / "Maria Garcia", "Maria" / "Maria Garcia Lopez") -> COMPATIBLE: not a
      conflict, but not a match either, so it adds no name weight;
    * otherwise -> DIFFERENT ("Maria Garcia" / "Jose Garcia": a household shares the surname).
    """
    na, nb = normalize_name(a), normalize_name(b)
    if not na or not nb:
        return NameRelation.MISSING
    if na == nb:
        return NameRelation.SAME
    ta, tb = na.split(), nb.split()
    if {t for t in ta if t in _GENERATIONAL} != {t for t in tb if t in _GENERATIONAL}:
        return NameRelation.DIFFERENT
    ta = [t for t in ta if t not in _GENERATIONAL]
    tb = [t for t in tb if t not in _GENERATIONAL]
    short, long = (ta, tb) if len(ta) <= len(tb) else (tb, ta)
    return NameRelation.COMPATIBLE if _every_token_matched(short, long) else NameRelation.DIFFERENT


def names_match(a: str, b: str) -> bool:
    """True when both names are present and normalize to the same canonical form."""
    return name_relation(a, b) is NameRelation.SAME


def names_conflict(a: str, b: str) -> bool:
    """True when two present names are different people's names (a household or a reassigned number).

    A missing name is no evidence either way (False); "M Garcia" vs "Maria Garcia" is not a conflict
    (but not a match either, see ``name_relation``).
    """
    return name_relation(a, b) is NameRelation.DIFFERENT
