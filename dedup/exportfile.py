"""Reading Podium export files (NDJSON) into prepared contacts, for ``scan --from-file``.

``survey_file`` reads the locations and counts the lines; ``iter_prepared_file`` prepares the contact
lines chunk by chunk, in worker processes when the file is big enough to be worth it (parsing JSON and
phone numbers is the CPU-bound part; the main process only writes).

A rescan reads the index's ``updatedAt`` of every contact once (``load_stamps``) and hands it to the
workers, which drop a line whose contact the index already holds at that ``updatedAt`` (unchanged) or
newer (the line is older than what a webhook wrote) before anything is parsed beyond the line's JSON:
a rescan of an unchanged export writes nothing.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
from django.db import DatabaseError, connection, connections

from dedup.indexing import (
    DEFAULT_BATCH_SIZE,
    IndexWriter,
    PreparedContact,
    WriteResult,
    prepare_contact,
    slim,
)
from dedup.stamps import Stamp, stamp_is_current, wire_stamp
from dedup.unstorable import RejectedLine, storable_uid, uid_problem, unstorable_reason
from podium_client.errors import MalformedResponse
from podium_client.types import (
    EXPECTED_EXPORT_SHAPE,
    OldExportShape,
    parse_export_line,
    parse_export_object,
)
from podium_client.types import Contact as PodiumContact
from podium_client.types import Location as PodiumLocation

# Below this many lines a file is prepared in this process: starting workers costs more than it saves.
PARALLEL_MIN_LINES = 50_000

# What in a line's bytes could decode to something the index cannot store (a NUL or surrogate escape,
# a non-finite or overflowing number): only such lines need ``unstorable_reason``'s full walk over
# every value; any other line can only be refused for its uids' lengths. ``SUSPECT`` is the definition;
# ``is_suspect`` answers the same question about ten times faster (one regex search over a 1 KB line
# cost more than parsing its JSON) and may say yes to more lines, never to fewer (a property test).
SUSPECT = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]|Infinity|NaN|[:,\[]\s*-?[0-9.]+[eE]\+?[0-9]{3}|[0-9]{300}")
_ESCAPES = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]")
# Every digit and dot becomes 0 and E becomes e, so whatever ``SUSPECT`` takes for a number with a
# three-digit exponent ends in 0e000 or 0e+000, and a run of 300 digits reads as 300 zeros.
_DIGITS = bytes.maketrans(b"0123456789.E", b"00000000000e")
_LONG_RUN = b"0" * 300


# A number of 19 or more digits: orjson reads an integer beyond 64 bits as a float, json exactly.
_LONG_NUMBER = b"0" * 19


def fold_digits(line: bytes) -> bytes:
    """The line with every digit and dot as 0 and E as e (what ``is_suspect`` and the parser look at)."""
    return line.translate(_DIGITS)


def is_suspect(line: bytes, folded: bytes | None = None) -> bool:
    """True for every line ``SUSPECT`` matches (and for a few more, which only cost the full walk)."""
    if b"Infinity" in line or b"NaN" in line:
        return True
    if b"\\u" in line and _ESCAPES.search(line):
        return True
    if folded is None:
        folded = fold_digits(line)
    return _LONG_RUN in folded or _has_big_exponent(folded)


_SPACE = frozenset(b" \t\n\r\f\v")
_NUMBER_START = frozenset(b":,[")


def _has_big_exponent(folded: bytes) -> bool:
    """Whether the folded line holds what ``SUSPECT`` takes for a number with a three-digit exponent.

    That is ``[:,[]``, spaces, an optional minus, digits or dots, then ``e000`` or ``e+000``. Uids are
    hex, so most lines hold ``e000`` somewhere; walking back from each one to look for the rest costs
    a tenth of a regex search over the whole line.
    """
    for marker in (b"e000", b"e+000"):
        at = folded.find(marker)
        while at > 0:
            start = at
            while start > 0 and folded[start - 1] == 0x30:  # "0": a digit or a dot
                start -= 1
            if start < at:
                before = start
                if before > 0 and folded[before - 1] == 0x2D:  # "-"
                    before -= 1
                while before > 0 and folded[before - 1] in _SPACE:
                    before -= 1
                if before > 0 and folded[before - 1] in _NUMBER_START:
                    return True
            at = folded.find(marker, at + 1)
    return False


# The index's stamps (uid -> updatedAt etc.) during a file scan; set before the workers fork, so
# they inherit it instead of receiving a copy per chunk.
_KNOWN: Mapping[str, Stamp | None] = {}

# The writer that worker processes write their own blocks with, on PostgreSQL (``iter_prepared_file``'s
# ``write_with``); set before the workers fork, like ``_KNOWN``.
_WRITER: IndexWriter | None = None


# --- export files ------------------------------------------------------------------------------------


@dataclass
class FileSurvey:
    """What a first quick pass over an export found: its locations and how many contact lines it has."""

    locations: list[PodiumLocation]
    contact_lines: int
    rejected: list[RejectedLine] = field(default_factory=list)


def _reject_reason(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at column {exc.start + 1})"
    if isinstance(exc, MalformedResponse):
        return exc.message
    return str(exc)


class ExportFileError(ValueError):
    """An export that cannot be scanned at all (wrong shape, empty); the message says what is expected."""


_BOM = b"\xef\xbb\xbf"

# Lines shorter than this are checked for being blank; no contact line is this short.
_SHORT = 64

# A block sent to a worker holds about this many bytes per contact the caller asked for per chunk.
_BYTES_PER_LINE = 1024


def _decode(line: bytes, lineno: int) -> str:
    if lineno == 1 and line.startswith(_BOM):
        line = line[3:]  # a byte-order mark some tools write; not part of the JSON
    return line.decode("utf-8")


def _is_blank(line: bytes, lineno: int) -> bool:
    """A line holding nothing but whitespace (and, on the first line, a byte-order mark)."""
    if lineno == 1 and line.startswith(_BOM):
        line = line[3:]
    return not line.strip()


def _raw_text(line: bytes | str) -> str:
    text = line if isinstance(line, str) else line.decode("utf-8", errors="backslashreplace")
    return text.rstrip("\r\n")


def survey_file(path: str) -> FileSurvey:
    """Read an export once, cheaply: collect its locations and count its contact lines.

    Locations may appear anywhere in an export, but each contact must be normalized with its location's
    region, so they are read first. Only location lines carry ``"object"``, so the other lines are
    counted without being decoded — except the first contact line, which is decoded to refuse a file in
    the pre-v4 shape at once (rather than rejecting every line of it). Raises ExportFileError for a file
    of the wrong shape or with nothing in it.
    """
    locations: list[PodiumLocation] = []
    rejected: list[RejectedLine] = []
    contacts = 0
    first_contact_checked = False
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            # A contact line is hundreds of bytes: only short lines can be blank (a million calls saved).
            if len(line) < _SHORT and _is_blank(line, lineno):
                continue
            if b'"object"' in line or not first_contact_checked:
                try:
                    parsed = parse_export_line(_decode(line, lineno))
                except OldExportShape as exc:
                    raise ExportFileError(f"{path}, line {lineno}: {exc.message}") from None
                except (MalformedResponse, UnicodeDecodeError) as exc:
                    parsed = None
                    if b'"object"' in line:
                        rejected.append(RejectedLine(lineno, "", _reject_reason(exc), _raw_text(line)))
                        continue
                if isinstance(parsed, PodiumLocation):
                    locations.append(parsed)
                    continue
                first_contact_checked = True
            contacts += 1
    if not contacts and not locations:
        raise ExportFileError(f"{path} holds no contacts: " + EXPECTED_EXPORT_SHAPE)
    return FileSurvey(locations, contacts, rejected)


def read_line(path: str, line_number: int) -> str:
    """The text of one line of an export (for showing a record the database refused), or ""."""
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if lineno == line_number:
                return _raw_text(line)
    return ""


_UNREAD = object()


def _orjson_value(line: bytes) -> Any:
    """The line's JSON value as orjson reads it, or ``_UNREAD`` when orjson refuses it (json decides)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return _UNREAD


def _parse_line(line: bytes, lineno: int, folded: bytes | None = None) -> Any:
    """The JSON value of one line (MalformedResponse / UnicodeDecodeError as ``parse_export_line``).

    orjson reads it (several times faster) unless it holds a number of 19 or more digits, which orjson
    would read differently from json; whatever orjson refuses (a byte-order mark, NaN, an overflowing
    number, a lone surrogate, bytes that are not UTF-8) is read by json, which decides exactly as a
    single-process read of the line does. Where both read a line, they give the same value.
    """
    if _LONG_NUMBER not in (fold_digits(line) if folded is None else folded):
        value = _orjson_value(line)
        if value is not _UNREAD:
            return value
    text = _decode(line, lineno)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise MalformedResponse(f"not JSON ({exc})") from None


def _is_current(line: bytes, known: Mapping[str, Stamp | None]) -> bool:
    """True when the index holds this line's contact at the same or a newer version.

    orjson reads the line (a rescan reads every line of the export; this is most of its work). A line
    it cannot read, or whose contact is new or changed, goes down the full path, which parses it with
    json exactly as a first scan does.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(obj, dict):
        return False
    uid = obj.get("uid")
    if type(uid) is not str or uid not in known:
        return False
    stamp = wire_stamp(obj)
    return stamp is not None and stamp_is_current(known[uid], stamp)


def _prepare_lines(
    lines: list[tuple[int, bytes]],
    regions: dict[str, str],
    default_region: str,
    known: Mapping[str, Stamp | None] | None = None,
) -> tuple[list[PreparedContact], list[RejectedLine], int]:
    """Parse and prepare a chunk of export lines (runs in a worker process for big files).

    A line that cannot be read or stored is set aside with its reason, never stops the chunk. A
    contact ``known`` holds at the same or a newer ``updatedAt`` is skipped (counted, not returned).
    """
    out: list[PreparedContact] = []
    rejected: list[RejectedLine] = []
    skipped = 0
    for lineno, line in lines:
        uid = ""
        if known and _is_current(line, known):
            skipped += 1
            continue
        folded = fold_digits(line)
        try:
            parsed = parse_export_object(_parse_line(line, lineno, folded))
            if not isinstance(parsed, PodiumContact):
                continue
            uid = parsed.uid
            home = parsed.location_uid
            prepared = prepare_contact(parsed, regions.get(home, default_region) if home else default_region)
        except (MalformedResponse, UnicodeDecodeError, ValueError) as exc:
            rejected.append(RejectedLine(lineno, storable_uid(uid), _reject_reason(exc), _raw_text(line)))
            continue
        problem = unstorable_reason(prepared) if is_suspect(line, folded) else uid_problem(prepared)
        if problem is not None:
            rejected.append(RejectedLine(lineno, storable_uid(uid), problem, _raw_text(line)))
            continue
        out.append(slim(prepared, lineno))
    return out, rejected, skipped


def _prepare_block_in_worker(
    block: bytes, first_line: int, regions: dict[str, str], default_region: str
) -> tuple[list[PreparedContact], list[RejectedLine], int, WriteResult | None, int]:
    """Split a block of the export into its contact lines and prepare them, in a worker process.

    The main process only reads blocks and counts their newlines: splitting a million lines and
    sending each across is work a worker does in parallel. The index's stamps come from
    ``_KNOWN``, inherited when the worker was forked.
    """
    lines = [
        (lineno, line)
        for lineno, line in enumerate(block.split(b"\n"), first_line)
        if not (
            (len(line) < _SHORT and _is_blank(line, lineno))
            or (b'"object"' in line and _is_location_line(line))
        )
    ]
    prepared, rejected, skipped = _prepare_lines(lines, regions, default_region, _KNOWN)
    written = _write_in_worker(prepared) if _WRITER is not None else None
    if written is not None:
        return [], rejected, skipped, written, len(prepared)
    return prepared, rejected, skipped, None, 0


def _write_in_worker(prepared: list[PreparedContact]) -> WriteResult | None:
    """Write a block's contacts from the worker that prepared them, on its own connection.

    Sending a contact to the writer process costs about as much as preparing it beyond its phones
    (pickling it, unpickling it, building its row there), and the writer does that work alone. A
    block is written here as ``IndexWriter.write`` writes any batch: in one transaction, never
    over a newer version. Anything out of the ordinary goes back to the writer process instead
    (returns None), which writes it as before and sets aside what the database refuses: a location
    this worker does not know (the writer creates placeholders), and any database error (a refused
    record, a contact another worker or a webhook wrote meanwhile, a deadlock between workers).
    The scan's checkpoint stays the writer's: a block written here but not yet counted when a scan
    stops is found unchanged by the resumed scan.
    """
    writer = _WRITER
    if writer is None or not prepared:
        return None
    if any(writer.location_id(uid) is None for p in prepared for uid in p.location_uids):
        return None
    driver: Any = getattr(connection, "Database", None)
    errors: tuple[type[BaseException], ...] = (DatabaseError,)
    if driver is not None:
        errors += (driver.DatabaseError,)
    try:
        return writer.write(prepared)
    except errors:
        connection.close()  # a fresh connection for the next block, whatever state this one is in
        return None


@dataclass
class PreparedChunk:
    """Prepared contacts of consecutive export lines; ``last_line`` is the number of the last one read.

    ``rejected`` holds the lines of the chunk that were set aside, with their reasons; ``skipped``
    counts the contacts the index already held as read (or newer), which were not prepared.
    """

    contacts: list[PreparedContact]
    last_line: int
    rejected: list[RejectedLine] = field(default_factory=list)
    skipped: int = 0
    # What a worker wrote itself (``iter_prepared_file``'s ``write_with``), and how many prepared
    # contacts it wrote from; ``contacts`` is then empty.
    written: WriteResult | None = None
    written_from: int = 0

    @property
    def read(self) -> int:
        """Contact lines of the chunk: prepared (written or not), set aside, or skipped as unchanged."""
        return len(self.contacts) + self.written_from + len(self.rejected) + self.skipped


def _is_location_line(line: bytes) -> bool:
    # Only location lines carry "object"; decoding just the rare lines that mention it is cheap.
    if b'"object"' not in line:
        return False
    try:
        obj = json.loads(line)
    except ValueError:
        return False  # the parser names the bad line later
    return isinstance(obj, dict) and obj.get("object") == "location"


def _read_chunks(
    fh: IO[bytes], start_after_line: int, chunk_lines: int
) -> Iterator[tuple[list[tuple[int, bytes]], int]]:
    """Contact lines in chunks of ``chunk_lines`` (locations were read by the survey), with line numbers."""
    chunk: list[tuple[int, bytes]] = []
    lineno = start_after_line
    for lineno, line in enumerate(fh, 1):
        if lineno <= start_after_line:
            continue
        if (len(line) < _SHORT and _is_blank(line, lineno)) or (
            b'"object"' in line and _is_location_line(line)
        ):
            continue
        chunk.append((lineno, line))
        if len(chunk) >= chunk_lines:
            yield chunk, lineno
            chunk = []
    if chunk or lineno > start_after_line:
        yield chunk, lineno


def _read_blocks(fh: IO[bytes], start_after_line: int, block_bytes: int) -> Iterator[tuple[bytes, int, int]]:
    """Whole lines in blocks of about ``block_bytes``: (bytes, number of its first line, of its last)."""
    lineno = 0
    while lineno < start_after_line and fh.readline():
        lineno += 1
    while True:
        block = fh.read(block_bytes)
        if not block:
            return
        if not block.endswith(b"\n"):
            block += fh.readline()  # finish the last line (or the file's last, unterminated one)
        lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        yield block, lineno + 1, lineno + lines
        lineno += lines


def iter_prepared_file(
    path: str,
    regions: dict[str, str],
    default_region: str,
    *,
    start_after_line: int = 0,
    chunk_lines: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    known: Mapping[str, Stamp | None] | None = None,
    write_with: IndexWriter | None = None,
) -> Iterator[PreparedChunk]:
    """Prepare an export's contacts chunk by chunk, in order, resuming after ``start_after_line``.

    ``known`` (``load_stamps``) skips the contacts the index holds at the same or a newer
    ``updatedAt``; without it every contact line is prepared.

    ``write_with`` lets worker processes write the contacts they prepared with that writer, on
    PostgreSQL (several connections write at once; SQLite has one writer): such a chunk carries
    ``written`` (what the write did) instead of ``contacts``. A chunk a worker could not write
    arrives with its contacts, for the caller to write.

    ``workers`` > 0 prepares in that many forked processes (at most a few chunks ahead of the
    caller, so memory stays flat however big the file); 0 prepares here. ``None`` chooses: workers
    when the file is big, this process is allowed children, and no transaction is open (forking
    requires closing this process's database connections first, so the child cannot disturb them).
    """
    if workers is None:
        workers = default_workers(path)
    elif workers > 0 and any(conn.in_atomic_block for conn in connections.all(initialized_only=True)):
        workers = 0  # forking needs this process's connections closed, which an open transaction forbids
    with open(path, "rb") as fh:
        if workers <= 0:
            for lines, last in _read_chunks(fh, start_after_line, chunk_lines):
                prepared, rejected, skipped = _prepare_lines(lines, regions, default_region, known)
                yield PreparedChunk(prepared, last, rejected, skipped)
            return
        blocks = _read_blocks(fh, start_after_line, chunk_lines * _BYTES_PER_LINE)
        # Forked children inherit open sockets; closing the connections first means neither side
        # can send on the other's session. Django reconnects on the next query.
        connections.close_all()
        ctx = multiprocessing.get_context("fork")
        global _KNOWN, _WRITER
        _KNOWN = known or {}
        _WRITER = write_with if write_with is not None and connection.vendor == "postgresql" else None
        try:
            yield from _prepare_in_pool(ctx, workers, blocks, regions, default_region)
        finally:
            _KNOWN = {}
            _WRITER = None


def _prepare_in_pool(
    ctx: Any,
    workers: int,
    blocks: Iterator[tuple[bytes, int, int]],
    regions: dict[str, str],
    default_region: str,
) -> Iterator[PreparedChunk]:
    """Prepare blocks of lines in ``workers`` forked processes, at most a few ahead of the caller."""
    with ctx.Pool(workers) as pool:
        pending: deque[tuple[Any, int]] = deque()
        ahead = workers * 2
        for block, first, last in blocks:
            pending.append(
                (pool.apply_async(_prepare_block_in_worker, (block, first, regions, default_region)), last)
            )
            if len(pending) > ahead:
                result, done_line = pending.popleft()
                yield _chunk(result.get(), done_line)
        while pending:
            result, done_line = pending.popleft()
            yield _chunk(result.get(), done_line)


def _chunk(
    result: tuple[list[PreparedContact], list[RejectedLine], int, WriteResult | None, int], last_line: int
) -> PreparedChunk:
    prepared, rejected, skipped, written, written_from = result
    return PreparedChunk(prepared, last_line, rejected, skipped, written, written_from)


def default_workers(path: str) -> int:
    """How many worker processes to prepare a file with (0 = in this process)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0
    if multiprocessing.current_process().daemon:  # e.g. inside a django-q worker: no children allowed
        return 0
    if any(conn.in_atomic_block for conn in connections.all(initialized_only=True)):
        return 0
    try:
        size = os.path.getsize(path)
    except OSError:
        return 0
    if size < PARALLEL_MIN_LINES * 400:  # about 400 bytes a contact line
        return 0
    return max(1, (os.cpu_count() or 1))
