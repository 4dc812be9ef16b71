"""Worker processes read an export in blocks of lines; what they prepare equals the line-by-line path."""

from __future__ import annotations

import json
from pathlib import Path

from dedup.exportfile import PreparedChunk, iter_prepared_file
from podium_client.corpus import LOCATIONS as DEMO_LOCATIONS
from podium_client.types import contact_export_line, location_export_line
from tests.fixtures_emulator import make_contact


def _summary(chunks: list[PreparedChunk]) -> tuple[list[tuple[int | None, str]], list[tuple[int | None, str]], int]:
    prepared = [(p.line_number, p.uid) for c in chunks for p in c.contacts]
    rejected = [(r.line_number, r.reason) for c in chunks for r in c.rejected]
    return prepared, rejected, chunks[-1].last_line


def test_blocks_in_workers_prepare_what_lines_in_process_do(tmp_path: Path) -> None:
    sydney = DEMO_LOCATIONS[0]["uid"]
    contacts = [
        contact_export_line(make_contact(uid=f"ct_{i}", locations=(sydney,), phones=(f"0412 000 {i:03d}",)))
        for i in range(700)
    ]
    lines = ["\ufeff" + location_export_line(DEMO_LOCATIONS[0]), *contacts[:300], "", "   ", '{"uid": 12}',
             location_export_line(DEMO_LOCATIONS[2]), *contacts[300:]]  # fmt: skip
    path = tmp_path / "export.ndjson"
    # Windows line ends, and no newline after the last line.
    path.write_bytes("\r\n".join(lines).encode("utf-8"))
    regions = {"x": "AU"}
    in_process = list(iter_prepared_file(str(path), regions, "AU", chunk_lines=64, workers=0))
    in_workers = list(iter_prepared_file(str(path), regions, "AU", chunk_lines=64, workers=2))
    assert len(in_workers) > 2  # several blocks
    assert _summary(in_workers) == _summary(in_process)
    prepared, rejected, last = _summary(in_workers)
    assert len(prepared) == 700 and last == len(lines)
    assert [n for n, _ in rejected] == [304] and "'uid'" in rejected[0][1]
    assert json.loads(contacts[0])["uid"] == prepared[0][1] and prepared[0][0] == 2

    # Resuming after a line reads only what follows it, in workers as in process.
    resumed = list(iter_prepared_file(str(path), regions, "AU", start_after_line=400, chunk_lines=64, workers=2))
    resumed_here = list(iter_prepared_file(str(path), regions, "AU", start_after_line=400, chunk_lines=64, workers=0))
    assert _summary(resumed) == _summary(resumed_here)
    assert [n for n, _ in _summary(resumed)[0]] == list(range(401, len(lines) + 1))
