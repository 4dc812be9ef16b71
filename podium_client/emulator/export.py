"""The v4 NDJSON export file: what `--load` reads and `--dump` writes.

One JSON object per line: a location line is a v4 location object with `"object": "location"` added;
a contact line is a v4 contact object exactly as `GET /v4/contacts` lists it (a tenant with the
`merge` or `soft-delete` capability adds `deletedAt` / `mergedIntoUid`). The organization's tags and
attribute definitions are rebuilt from the contacts. A file in the old invented shape, a line that is
not a JSON object, or an empty file is refused with an ExportFileError naming the line and saying
what shape is expected. A UTF-8 byte order mark is tolerated.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from podium_client.emulator import shapes
from podium_client.emulator.shapes import ShapeError

if TYPE_CHECKING:
    from podium_client.emulator.state import EmulatorState

EXPECTED = (
    'expected Podium v4 NDJSON: one JSON object per line, a location object with "object": '
    '"location" or a contact object as GET /v4/contacts returns it'
)


class ExportFileError(ValueError):
    """An export file the emulator refuses; the message names the line and the expected shape."""


def load_file(state: EmulatorState, path: str | os.PathLike[str]) -> int:
    """Load an export file into `state`; returns the number of contacts loaded."""
    with open(path, encoding="utf-8-sig") as fh:
        try:
            return load_lines(state, fh)
        except UnicodeDecodeError as exc:
            raise ExportFileError(f"{path}: not UTF-8 text ({exc.reason}); {EXPECTED}") from None


def load_lines(state: EmulatorState, lines: Iterable[str | bytes]) -> int:
    """Load export lines into `state`; returns the number of contacts loaded."""
    count = 0
    objects = 0
    with state.lock:
        for lineno, line in enumerate(lines, 1):
            text = line.decode("utf-8") if isinstance(line, bytes) else line
            if lineno == 1:
                text = text.lstrip("\ufeff")
            text = text.strip()
            if not text:
                continue
            objects += 1
            try:
                obj = json.loads(text)
            except ValueError as exc:
                raise ExportFileError(f"line {lineno}: not JSON ({exc}); {EXPECTED}") from None
            if not isinstance(obj, dict):
                raise ExportFileError(f"line {lineno}: not a JSON object; {EXPECTED}")
            try:
                if obj.get("object") == "location":
                    state.add_location(obj)
                elif "country" in obj and "locations" not in obj:
                    raise ShapeError(
                        'this looks like a location in the old export shape (a top-level "country"); '
                        'v4 locations carry it as addressDetails.country and are marked "object": "location"'
                    )
                else:
                    state.load_contact(obj, text)
                    count += 1
            except ValueError as exc:  # ShapeError, or a duplicate uid
                raise ExportFileError(f"line {lineno}: {exc}") from None
    if not objects:
        raise ExportFileError(f"the export file is empty; {EXPECTED}")
    return count


def dump_lines(state: EmulatorState) -> Iterator[str]:
    """The state as export lines (no newlines): locations first, then contacts in listing order.

    Contacts appear as the API lists them; hidden ones (only tenants with capabilities have them)
    are written too, with `deletedAt` / `mergedIntoUid`, so a dump loses nothing.
    """
    with state.lock:
        locations = state.locations()
        raws = [state.served(rec) for rec in state.store]
    for loc in locations:
        yield shapes.location_export_line(loc)
    for raw in raws:
        yield raw.decode("utf-8")


def dump(state: EmulatorState, path: str | os.PathLike[str]) -> None:
    """Write the state as an export file atomically (a crash never leaves half a file)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for line in dump_lines(state):
                fh.write(line)
                fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
