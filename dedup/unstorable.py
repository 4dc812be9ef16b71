"""Records the index cannot hold as read, and the reasons given for setting them aside."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from dedup.models import Contact

if TYPE_CHECKING:
    from dedup.indexing import PreparedContact

_UID_MAX = Contact._meta.get_field("uid").max_length or 64


class RejectedLine(NamedTuple):
    """A record set aside by a scan: where it was, whose it was (if known), why, and its raw text."""

    line_number: int | None
    contact_uid: str
    reason: str
    raw: str


def unstorable_reason(p: PreparedContact) -> str | None:
    """Why the index cannot hold this contact as read, or None.

    NUL characters (PostgreSQL text cannot hold them), lone surrogates (not encodable as UTF-8), numbers
    JSON cannot carry (infinity, NaN) and uids longer than the index's column cannot be stored; the
    contact is set aside for a person instead of failing the whole write.
    """
    problem = uid_problem(p)
    if problem is not None:
        return problem
    for value in _scalars_of((p.uid, p.name, p.channels, p.tags, p.attributes, p.address, p.conversations)):
        if isinstance(value, float):
            if not math.isfinite(value):
                # JSON has no Infinity or NaN (a number like 1e400 reads as infinity): no database
                # stores it in a JSON column.
                return f"holds the number {value!r}, which JSON cannot carry; fix the contact in Podium"
            continue
        if "\x00" in value:
            return "contains a NUL character (U+0000), which the database cannot store; fix the contact in Podium"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains an unpaired surrogate (invalid Unicode); fix the contact in Podium"
    return None


def uid_problem(p: PreparedContact) -> str | None:
    """Why the index cannot hold this contact's uids (one longer than the column), or None.

    The part of ``unstorable_reason`` a record read from clean JSON text can still fail.
    """
    if len(p.uid) > _UID_MAX:
        return f"uid is {len(p.uid)} characters long; Podium uids are at most {_UID_MAX}"
    for field_name, uid in [
        ("mergedIntoUid", p.merged_into_uid),
        *(("locations", u) for u in p.location_uids),
    ]:
        if len(uid) > _UID_MAX:
            return f"a uid in {field_name} is {len(uid)} characters long; Podium uids are at most {_UID_MAX}"
    return None


def storable_uid(uid: str) -> str:
    """The uid to file a set-aside record under: the uid itself when the index could hold it, else ""."""
    if len(uid) > _UID_MAX or "\x00" in uid:
        return ""
    try:
        uid.encode("utf-8")
    except UnicodeEncodeError:
        return ""
    return uid


def _scalars_of(value: Any) -> Iterator[str | float]:
    """Every string (keys included) and float inside a JSON-like value."""
    if isinstance(value, str | float):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _scalars_of(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _scalars_of(item)
