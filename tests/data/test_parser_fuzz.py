"""Property-based fuzzing of the raw Ali-CCP parser.

Valid lines written by the project's writer read back exactly; corrupted files never raise, and
every file's counts reconcile: lines read = rows kept + rows quarantined (each under a named
rule), with every row and every quarantined line as the independent reference
(``aliccp_reference``) says. Derandomized, so CI runs the same examples every time; a longer,
random hunt: ``PARSER_FUZZ_EXAMPLES=5000 PARSER_FUZZ_RANDOM=1 pytest tests/data/test_parser_fuzz.py``.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pytest
from aliccp_reference import assert_matches_reference, ref_parse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rec_pipeline.data.aliccp import (
    COMMON_FIELDS,
    COMMON_KIND,
    SKELETON_FIELDS,
    SKELETON_KIND,
    FileParser,
    NoValidRowsError,
    parse_file,
    writer,
)
from rec_pipeline.data.aliccp import parser as aliccp_parser

# Every test runs with each tokenizer (tests/data/conftest.py).
pytestmark = pytest.mark.usefixtures("each_tokenizer")
FUZZ = settings(
    max_examples=int(os.environ.get("PARSER_FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=not os.environ.get("PARSER_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FIELDS = {SKELETON_KIND: list(SKELETON_FIELDS), COMMON_KIND: list(COMMON_FIELDS)}
# Field tokens the parser is not asked for: short, 8 bytes, and longer than 8 (the dict path).
UNKNOWN_FIELDS = ["999", "12345678", "not_configured"]
REASONS = {
    "empty_line",
    "garbage_bytes",
    "wrong_column_count",
    "bad_number",
    "bad_common_feature_index",
    "bad_feature_list",
    "feature_num_mismatch",
    "click0_conversion1",
}
# Chunk sizes: smaller than a line (the buffer grows), a few lines, the default; each chunk is
# parsed in slices of about SLICE_BYTES (tiny: many slices per chunk; the default: one).
CHUNK_BYTES = st.sampled_from([7, 300, 1 << 24])
SLICE_BYTES = st.sampled_from([64, 1 << 20])

# ------------------------------------------------------------------------------- strategies

ids = st.one_of(st.integers(0, 10**6), st.integers(0, 2**63 - 1))
float32_text = st.floats(width=32, allow_nan=False, allow_infinity=False).map(
    lambda v: writer.float_text(np.array([v]))[0].as_py()
)
decimal_text = st.from_regex(r"-?[0-9]{1,9}(\.[0-9]{0,8})?", fullmatch=True)
exponent_text = st.from_regex(r"[+-]?[0-9]{1,3}(\.[0-9]{0,3})?[eE][+-]?[0-2]?[0-9]", fullmatch=True)
# The whole decimal grammar: signs, leading / trailing dots, up to 21 digits.
grammar_text = st.from_regex(r"[+-]?([0-9]{1,10}\.?[0-9]{0,10}|\.[0-9]{1,10})", fullmatch=True)
values = st.one_of(float32_text, decimal_text, exponent_text, grammar_text)
cfi = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=","), min_size=1
)


def features(kind: str):
    names = FIELDS[kind] + UNKNOWN_FIELDS
    return st.lists(st.tuples(st.sampled_from(names), ids, values), max_size=12)


labels = st.sampled_from([(0, 0), (1, 0), (1, 1)])
skeleton_rows = st.lists(
    st.tuples(st.integers(0, 2**63 - 1), labels, cfi, features(SKELETON_KIND)), max_size=25
)
common_rows = st.lists(st.tuples(cfi, features(COMMON_KIND)), max_size=15)


def written_lines(kind: str, rows: list) -> bytes:
    """The rows as text, through the project's writer."""
    if not rows:
        return b""
    names = FIELDS[kind] + UNKNOWN_FIELDS
    feats = [r[-1] for r in rows]
    flat = [f for fs in feats for f in fs]
    per_line = np.array([len(fs) for fs in feats], dtype=np.int64)
    field_of = np.array([names.index(f) for f, _, _ in flat], dtype=np.int64)
    fids = np.array([i for _, i, _ in flat], dtype=np.int64)
    texts = pa.array([v for _, _, v in flat], type=pa.large_string())
    flist = writer.feature_lists(names, field_of, fids, texts, per_line)
    cfis = pa.array([r[-2] for r in rows])
    if kind == SKELETON_KIND:
        sid = np.array([r[0] for r in rows], dtype=np.int64)
        click = np.array([r[1][0] for r in rows])
        conv = np.array([r[1][1] for r in rows])
        lines = writer.skeleton_lines(sid, click, conv, cfis, per_line, flist)
    else:
        lines = writer.common_lines(cfis, per_line, flist)
    return bytes(writer.text_bytes(lines))


def check(data: bytes, kind: str, chunk_bytes: int, slice_bytes: int = 1 << 20):
    """Parse ``data`` and check it against the reference; returns (report, rows)."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(aliccp_parser, "_SLICE_BYTES", slice_bytes),
    ):
        path = Path(tmp) / "raw.csv"
        path.write_bytes(data)
        report, rows, quarantine = assert_matches_reference(path, kind, FIELDS[kind], chunk_bytes)
    assert set(report.counts) <= REASONS
    assert len(quarantine) == report.rejected
    return report, rows


# ------------------------------------------------------------------------------ round trips


@FUZZ
@given(rows=skeleton_rows, chunk_bytes=CHUNK_BYTES)
def test_written_skeleton_lines_read_back_exactly(rows, chunk_bytes):
    report, parsed = check(written_lines(SKELETON_KIND, rows), SKELETON_KIND, chunk_bytes)
    assert report.rejected == 0 and len(parsed) == len(rows)
    for (sid, (click, conv), index, feats), row in zip(rows, parsed, strict=True):
        assert (row["sample_id"], row["click"], row["conversion"]) == (sid, click, conv)
        assert row["common_feature_index"] == index
        for f in SKELETON_FIELDS:
            assert row[f"id_{f}"] == [i for name, i, _ in feats if name == f]
            expected = [float(np.float32(float(v))) for name, _, v in feats if name == f]
            assert row[f"w_{f}"] == expected


@FUZZ
@given(rows=common_rows, chunk_bytes=CHUNK_BYTES)
def test_written_common_lines_read_back_exactly(rows, chunk_bytes):
    report, parsed = check(written_lines(COMMON_KIND, rows), COMMON_KIND, chunk_bytes)
    assert report.rejected == 0 and len(parsed) == len(rows)
    for (index, feats), row in zip(rows, parsed, strict=True):
        assert row["common_feature_index"] == index
        for f in COMMON_FIELDS:
            assert row[f"id_{f}"] == [i for name, i, _ in feats if name == f]
            expected = [float(np.float32(float(v))) for name, _, v in feats if name == f]
            assert row[f"w_{f}"] == expected
    unknown = Counter(name for _, feats in rows for name, _, _ in feats if name in UNKNOWN_FIELDS)
    assert report.unknown_fields == dict(unknown)


# ------------------------------------------------------------------------------ corruptions


def _truncate(line: bytes, at: int, _: bytes) -> bytes:
    return line[: at % (len(line) + 1)]


def _separator(line: bytes, at: int, pick: bytes) -> bytes:
    if not line:
        return line
    i = at % len(line)
    sep = b",\x01\x02\x03"[pick[0] % 4 if pick else 0]
    return line[:i] + bytes([sep]) + line[i + 1 :]


def _non_numeric(line: bytes, at: int, pick: bytes) -> bytes:
    i = at % (len(line) + 1)
    return line[:i] + (b"x", b"-", b".", b"+", b"e", b" ")[pick[0] % 6 if pick else 0] + line[i:]


def _digits(line: bytes, at: int, pick: bytes) -> bytes:
    """Digits somewhere: leading zeros, ids and counts past 16 digits or past int64."""
    i = at % (len(line) + 1)
    return line[:i] + bytes(48 + b % 10 for b in pick) * 3 + line[i:]


def _garbage(line: bytes, at: int, pick: bytes) -> bytes:
    i = at % (len(line) + 1)
    return line[:i] + pick + line[i:]


def _delete(line: bytes, at: int, _: bytes) -> bytes:
    if not line:
        return line
    i = at % len(line)
    return line[:i] + line[i + 1 :]


CORRUPTIONS = [_truncate, _separator, _non_numeric, _digits, _garbage, _delete]
corruption = st.tuples(
    st.integers(0, 10**6),  # which line
    st.sampled_from(CORRUPTIONS),
    st.integers(0, 10**6),  # where in the line
    st.binary(min_size=1, max_size=6),
)


def corrupt(data: bytes, ops, duplicates: list[int], blank: list[int]) -> list[bytes]:
    lines = data.split(b"\n")[:-1] if data else []
    for which, op, at, pick in ops:
        if lines:
            k = which % len(lines)
            lines[k] = op(lines[k], at, pick)
    for which in duplicates:  # the same line (and sample id) twice
        if lines:
            lines.append(lines[which % len(lines)])
    for which in blank:
        lines.insert(which % (len(lines) + 1), b"")
    return lines


def assemble(lines: list[bytes], crlf: bool, final_newline: bool) -> bytes:
    end = b"\r\n" if crlf else b"\n"
    return end.join(lines) + (end if final_newline and lines else b"")


def fuzz_file(kind: str, rows):
    return st.tuples(
        rows,
        st.lists(corruption, max_size=8),
        st.lists(st.integers(0, 100), max_size=2),
        st.lists(st.integers(0, 100), max_size=2),
        st.booleans(),
        st.booleans(),
    ).map(
        lambda t: assemble(
            corrupt(written_lines(kind, t[0]), t[1], t[2], t[3]), crlf=t[4], final_newline=t[5]
        )
    )


@FUZZ
@given(
    data=fuzz_file(SKELETON_KIND, skeleton_rows), chunk_bytes=CHUNK_BYTES, slice_bytes=SLICE_BYTES
)
def test_corrupted_skeleton_files_reconcile(data, chunk_bytes, slice_bytes):
    check(data, SKELETON_KIND, chunk_bytes, slice_bytes)


@FUZZ
@given(data=fuzz_file(COMMON_KIND, common_rows), chunk_bytes=CHUNK_BYTES, slice_bytes=SLICE_BYTES)
def test_corrupted_common_files_reconcile(data, chunk_bytes, slice_bytes):
    check(data, COMMON_KIND, chunk_bytes, slice_bytes)


@FUZZ
@given(data=st.binary(max_size=400), kind=st.sampled_from([SKELETON_KIND, COMMON_KIND]))
def test_arbitrary_bytes_reconcile(data, kind):
    check(data, kind, 64)


@FUZZ
@given(
    lines=st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), min_size=1),
    kind=st.sampled_from([SKELETON_KIND, COMMON_KIND]),
)
def test_a_file_of_only_bad_lines_raises_the_named_error(lines, kind):
    """Every line broken (no comma at all): all quarantined, and parse_file says why."""
    data = b"\n".join(line.replace(b",", b"") for line in lines) + b"\n"
    report, _ = check(data, kind, 1 << 24)
    assert report.valid_rows == 0 and report.rejected == report.lines == len(lines)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bad.csv"
        path.write_bytes(data)
        with pytest.raises(NoValidRowsError, match="all rejected") as info:
            parse_file(path, kind, FIELDS[kind])
    assert info.value.report.lines == len(lines)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    parser = FileParser(path, SKELETON_KIND, FIELDS[SKELETON_KIND])
    assert list(parser.chunks()) == []
    assert parser.report.lines == parser.report.valid_rows == parser.report.rejected == 0
    assert ref_parse(b"", SKELETON_KIND, FIELDS[SKELETON_KIND])[0] == 0
    with pytest.raises(NoValidRowsError, match="the file is empty"):
        parse_file(path, SKELETON_KIND, FIELDS[SKELETON_KIND])
