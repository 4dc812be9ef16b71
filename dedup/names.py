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
from collections.abc import Sequence
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

# Common short forms of given names, folded like name tokens: short form -> the full names it stands for.
# A short form and its full name ("Jen" / "Jennifer"), or two short forms of one full name ("Bob" /
# "Rob"), *could* be one person: ``name_relation`` calls them compatible, never a conflict. They are not
# "the same name" either: a short form is shared across people ("Alex" is Alexander or Alexandra, "Pat"
# Patrick or Patricia; a father Robert and his son Bobby share a home phone), so a person confirms it.
_SHORT_FORMS: dict[str, tuple[str, ...]] = {
    "robert": ("bob", "bobby", "rob", "robbie", "bert"),
    "elizabeth": ("liz", "lizzie", "beth", "betty", "betsy", "eliza", "libby"),
    "katherine": ("kate", "katie", "kathy", "kat", "kit"),
    "catherine": ("cate", "cathy", "cat", "kate", "katie"),
    "kathryn": ("kate", "katie", "kathy"),
    "william": ("bill", "billy", "will", "willy"),
    "michael": ("mike", "mick", "mickey", "mikey"),
    "james": ("jim", "jimmy", "jamie"),
    "jennifer": ("jen", "jenn", "jenny"),
    "margaret": ("peggy", "maggie", "meg", "marge", "margie"),
    "patricia": ("pat", "patty", "trish", "tricia"),
    "patrick": ("pat", "paddy"),
    "richard": ("rick", "ricky", "rich", "dick"),
    "joseph": ("joe", "joey"),
    "josephine": ("jo", "josie"),
    "christopher": ("chris", "kit"),
    "christine": ("chris", "chrissy", "tina"),
    "christina": ("chris", "chrissy", "tina"),
    "anthony": ("tony",),
    "nicholas": ("nick", "nicky"),
    "alexander": ("alex", "xander", "sandy"),
    "alexandra": ("alex", "lexi", "sandy"),
    "jonathan": ("jon", "jonny"),
    "john": ("jack", "johnny"),
    "timothy": ("tim", "timmy"),
    "thomas": ("tom", "tommy"),
    "daniel": ("dan", "danny"),
    "samuel": ("sam", "sammy"),
    "samantha": ("sam", "sammy"),
    "benjamin": ("ben", "benny"),
    "matthew": ("matt",),
    "andrew": ("andy", "drew"),
    "joshua": ("josh",),
    "jessica": ("jess", "jessie"),
    "olivia": ("liv", "livvy"),
    "charlotte": ("charlie", "lottie"),
    "charles": ("charlie", "chuck", "chas"),
    "amelia": ("millie",),
    "hannah": ("annie",),
    "sarah": ("sally",),
    "edward": ("ed", "eddie", "ted", "ned"),
    "david": ("dave", "davy"),
    "stephen": ("steve",),
    "steven": ("steve",),
    "susan": ("sue", "susie"),
    "deborah": ("deb", "debbie"),
    "rebecca": ("becky", "bec"),
    "victoria": ("vicky", "tori"),
    "gregory": ("greg",),
    "jeffrey": ("jeff",),
    "kenneth": ("ken", "kenny"),
    "ronald": ("ron", "ronnie"),
    "donald": ("don", "donny"),
    "douglas": ("doug",),
    "lawrence": ("larry",),
    "peter": ("pete",),
    "philip": ("phil",),
    "phillip": ("phil",),
    "raymond": ("ray",),
    "abigail": ("abby",),
    "eleanor": ("ellie", "nell"),
    "emily": ("em", "emmy"),
    "isabella": ("izzy", "bella"),
    "isabel": ("izzy", "bel"),
    "jacqueline": ("jackie",),
    "judith": ("judy",),
    "kimberly": ("kim",),
    "natalie": ("nat",),
    "nathaniel": ("nate", "nat"),
    "nathan": ("nate",),
    "pamela": ("pam",),
    "penelope": ("penny",),
    "theodore": ("theo", "ted"),
    "zachary": ("zach", "zack"),
    "matilda": ("tilly",),
    "frederick": ("fred", "freddie"),
    "henry": ("harry", "hank"),
    "albert": ("al", "bert"),
    "alfred": ("alf", "alfie"),
    "jacob": ("jake",),
    "angela": ("angie",),
    "gerald": ("gerry",),
    "dorothy": ("dot", "dottie"),
}  # fmt: skip


def _given_name_roots(table: dict[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
    roots: dict[str, set[str]] = {}
    for full, shorts in table.items():
        roots.setdefault(full, set()).add(full)
        for short in shorts:
            roots.setdefault(short, set()).add(full)
    return {token: frozenset(names) for token, names in roots.items()}


# Token -> the full given names it may stand for (a full name stands for itself).
NICKNAME_ROOTS: dict[str, frozenset[str]] = _given_name_roots(_SHORT_FORMS)


def is_short_form_of(a: str, b: str) -> bool:
    """Whether two different name tokens may be one given name, one a short form of the other or both of one
    full name ("jen"/"jennifer", "bob"/"rob"); tokens as ``normalize_name`` gives them."""
    if a == b:
        return False
    roots_a, roots_b = NICKNAME_ROOTS.get(a), NICKNAME_ROOTS.get(b)
    return bool(roots_a and roots_b and roots_a & roots_b)


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
    """Whether two tokens may denote the same name part: equal, one the initial of the other, or a short
    form and its full given name ("jen"/"jennifer")."""
    if a == b:
        return True
    if len(a) == 1 and b.startswith(a):
        return True
    if len(b) == 1 and a.startswith(b):
        return True
    return is_short_form_of(a, b)


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
    * every token of the shorter name pairs with its own token of the longer one, equal, as an initial
      or as a common short form ("M Garcia" / "Maria Garcia", "Maria" / "Maria Garcia Lopez",
      "Jen Murphy" / "Jennifer Murphy") -> COMPATIBLE: not a conflict, but not a match either, so it
      adds no name weight and a person confirms the merge;
    * otherwise -> DIFFERENT ("Maria Garcia" / "Jose Garcia": a household shares the surname).
    """
    return relation_of_normalized(normalize_name(a), normalize_name(b))


def relation_of_normalized(na: str, nb: str) -> NameRelation:
    """``name_relation`` of two names already in canonical form (``normalize_name``'s output), for
    callers that stored the canonical form and compare it many times (detection)."""
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


# Lower-case words that are part of a well-formed surname ("Ludwig van Beethoven", "Maria da Silva").
_PARTICLES: frozenset[str] = frozenset(
    {"van", "von", "der", "den", "de", "del", "della", "di", "da", "das", "dos", "du", "la", "le", "lo",
     "bin", "binti", "ibn", "al", "el", "ter", "ten", "af", "zu", "y", "e"}
)  # fmt: skip
_ROMAN = frozenset({"ii", "iii", "iv", "vi"})


def _badly_cased_words(name: str) -> int:
    """Words not written as a name is: all lower-case, or all capitals (beyond initials and numerals).

    Each part of a hyphenated or apostrophed word counts ("garcia-Lopez" has one bad part); a word of a
    script without case (Chinese, Arabic) is always well cased; so are particles in lower case.
    """
    bad = 0
    for word in name.replace(",", " ").split():
        for part in "".join(ch if ch.isalpha() else " " for ch in word).split():
            if not any(ch.isupper() or ch.islower() for ch in part):
                continue
            lower = part.casefold()
            if part.islower() and lower not in _PARTICLES:
                bad += 1
            elif part.isupper() and len(part) > 1 and lower not in _ROMAN:
                bad += 1
    return bad


def _written_last_first(name: str) -> bool:
    """"GARCIA, Maria": a comma after the first word(s), not one before a suffix or title ("Smith, Jr")."""
    head, comma, tail = name.partition(",")
    if not comma or not _tokens(head):
        return False
    rest = [t for t in _fold(tail).replace(".", " ").replace(",", " ").split() if t not in _GENERATIONAL]
    return any(t not in TITLES for t in rest)


def _accented_letters(name: str) -> int:
    """Letters carrying a diacritic (é, ñ, ā): a spelling that kept them lost nothing."""
    return sum(1 for ch in unicodedata.normalize("NFD", name) if unicodedata.combining(ch))


def spelling_quality(name: str) -> tuple[int, int, int, int, int]:
    """How well-formed a spelling of a name is, as a key to maximise (higher is better).

    In order of importance: every word capitalised as a name is (not "inés murphy", not "ZHANG"); the
    given name first, not "LAST, First"; accents kept ("Inés" over "Ines"); no compatibility forms
    (full-width letters); spacing tidy.
    """
    tidy = " ".join(name.split())
    return (
        -_badly_cased_words(name),
        0 if _written_last_first(name) else 1,
        _accented_letters(name),
        1 if unicodedata.normalize("NFKC", name) == name else 0,
        1 if tidy == name else 0,
    )


def best_spelling(names: Sequence[str]) -> str | None:
    """The best-formed spelling of the first usable name in ``names``, among the names spelling the same.

    Only names with the same canonical form (``normalize_name``) as the first usable one compete, so a
    different person's name, or "M Garcia" for "Maria Garcia", is never chosen. Among them the one with the
    highest ``spelling_quality`` wins, the earliest on a tie (put the survivor's own name first to keep it
    when nothing is better), returned with its spacing tidied. None when no name is usable. E.g. ``["inés murphy", "Ines Murphy",
    "Inés Murphy"]`` gives "Inés Murphy"; ``["ZHANG, François", "François Zhang"]`` gives "François Zhang".
    """
    usable = [n for n in names if isinstance(n, str) and normalize_name(n)]
    if not usable:
        return None
    canonical = normalize_name(usable[0])
    same = [n for n in usable if normalize_name(n) == canonical]
    best = max(range(len(same)), key=lambda i: (spelling_quality(same[i]), -i))
    return " ".join(same[best].split())
