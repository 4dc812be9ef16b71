"""The fast reading of export lines decides exactly what the plain reading did.

``is_suspect`` must send every line ``SUSPECT`` matches to ``unstorable_reason``'s full walk (it may send
more, never fewer), and ``_parse_line``, which lets orjson read most lines, must give the value json
gives for every line json reads, and refuse the lines json refuses.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dedup.exportfile import SUSPECT, _parse_line, is_suspect
from dedup.indexing import _attributes_json, _json_exact
from podium_client.errors import MalformedResponse

# Pieces that make up what SUSPECT looks for, and what sits near it in a real line (hex uids, quotes).
_PIECES = [
    b"0", b"1", b"9", b".", b"e", b"E", b"+", b"-", b":", b",", b"[", b"]", b" ", b"\t", b"\n", b"\x0b",
    b'"', b"\\u", b"0000", b"d8", b"DA", b"df", b"Infinity", b"NaN", b"a", b"f", b"{", b"}",
]  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join))
@example(b'{"a":1e400}')
@example(b'{"a": -1.5E+308}')
@example(b'{"a":[.e123]}')
@example(b'{"a":1' + b"7" * 299 + b"}")
def test_is_suspect_takes_every_line_suspect_matches(line: bytes) -> None:
    if SUSPECT.search(line):
        assert is_suspect(line)


def test_is_suspect_passes_a_plain_contact_line_with_hex_uids() -> None:
    line = b'{"uid":"5e123456-0e00-4e12-ae99-1e2e3e400000","name":"A","createdAt":"2024-01-01T00:00:00Z"}'
    assert not SUSPECT.search(line)
    assert not is_suspect(line)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


def _canonical(value: Any) -> str:
    # json.dumps tells 1 from 1.0 and -0.0 from 0.0, and writes NaN the same way each time.
    return json.dumps(value, sort_keys=True)


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _values, max_size=6), st.booleans())
def test_parse_line_reads_what_json_reads(obj: dict[str, Any], ascii_only: bool) -> None:
    line = json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", errors="surrogatepass")
    try:
        expected: Any = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        with pytest.raises((MalformedResponse, UnicodeDecodeError)):
            _parse_line(line, 2)
        return
    assert _canonical(_parse_line(line, 2)) == _canonical(expected)


@pytest.mark.parametrize(
    "line",
    [
        b'{"n":123456789012345678901234567890}',  # orjson would read a float
        b'{"n":18446744073709551616}',
        b'{"n":1e400}',
        b'{"n":NaN}',
        b'{"s":"\\ud800"}',
        b'\xef\xbb\xbf{"uid":"x"}',  # a byte-order mark on the first line
        b'{"s":"\\u0000"}',
    ],
)
def test_parse_line_matches_json_where_orjson_differs_or_refuses(line: bytes) -> None:
    text = line[3:] if line.startswith(b"\xef\xbb\xbf") else line
    assert _canonical(_parse_line(line, 1)) == _canonical(json.loads(text))


def test_parse_line_refuses_what_json_refuses() -> None:
    with pytest.raises(MalformedResponse):
        _parse_line(b'{"uid": "x",}', 2)
    with pytest.raises(UnicodeDecodeError):
        _parse_line(b'{"uid": "\xff"}', 2)


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "uid": st.text(max_size=6),
                "label": st.text(max_size=6),
                "value": _scalars | st.lists(st.text(max_size=4), max_size=3),
                "dataType": st.sampled_from(["TEXT", "NUMBER", "BOOLEAN", "DATE", "MULTI_SELECT"]),
            }
        ),
        max_size=4,
    )
)
def test_attributes_json_means_what_json_writes(attributes: list[dict[str, Any]]) -> None:
    text = _attributes_json(attributes)
    expected = _json_exact(attributes)
    if any(type(a["value"]) is float and not math.isfinite(a["value"]) for a in attributes):
        assert text == expected  # written as json writes it, so the database refuses it
    else:
        assert _canonical(json.loads(text)) == _canonical(json.loads(expected))
