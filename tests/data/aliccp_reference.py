"""An independent reference for the raw Ali-CCP parser: the documented rules, one line at a time
in plain Python, and a check of the parser's rows, quarantine and report against it."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

from rec_pipeline.data.aliccp import (
    QUARANTINE_SCHEMA,
    SKELETON_KIND,
    ParseReport,
    iter_parsed_chunks,
    rows_schema,
)

_DIGITS = re.compile(rb"[0-9]+")
_DECIMAL = re.compile(rb"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_FEATURE = re.compile(rb"([^\x02\x03]+)\x02([^\x02\x03]*)\x03([^\x02\x03]*)")


def ref_int(tok: bytes):
    if _DIGITS.fullmatch(tok) and int(tok) < 2**63:
        return int(tok)
    return None


def ref_float(tok: bytes):
    if not _DECIMAL.fullmatch(tok):
        return None
    with np.errstate(over="ignore"):
        value = float(np.float32(float(tok)))
    return value if math.isfinite(value) else None


def ref_line(line: bytes, kind: str, fields):
    """(reason, row, unknown field tokens) for one line without its line end."""
    if line == b"":
        return "empty_line", None, []
    if any(not (32 <= x <= 126 or x in (1, 2, 3)) for x in line):
        return "garbage_bytes", None, []
    cols = line.split(b",")
    if len(cols) != (6 if kind == SKELETON_KIND else 3):
        return "wrong_column_count", None, []
    row = {}
    if kind == SKELETON_KIND:
        sid, click, conv, cfi, num, flist = cols
        if ref_int(sid) is None or click not in (b"0", b"1") or conv not in (b"0", b"1"):
            return "bad_number", None, []
        row.update(sample_id=int(sid), click=int(click), conversion=int(conv))
    else:
        cfi, num, flist = cols
    if cfi == b"" or any(x in (1, 2, 3) for x in cfi):
        return "bad_common_feature_index", None, []
    if ref_int(num) is None:
        return "bad_number", None, []
    parts = flist.split(b"\x01") if flist else []
    matches = [_FEATURE.fullmatch(p) for p in parts]
    if not all(matches):
        return "bad_feature_list", None, []
    parsed = [(m[1].decode(), ref_int(m[2]), ref_float(m[3])) for m in matches]
    if any(fid is None or w is None for _, fid, w in parsed):
        return "bad_number", None, []
    if int(num) != len(parsed):
        return "feature_num_mismatch", None, []
    if kind == SKELETON_KIND and row["click"] == 0 and row["conversion"] == 1:
        return "click0_conversion1", None, []
    row["common_feature_index"] = cfi.decode()
    for f in fields:
        row[f"id_{f}"] = [fid for name, fid, _ in parsed if name == f]
        row[f"w_{f}"] = [w for name, _, w in parsed if name == f]
    return None, row, [name for name, _, _ in parsed if name not in fields]


def ref_parse(data: bytes, kind: str, fields):
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    rows, quarantine, unknown = [], [], Counter()
    for number, line in enumerate(lines, start=1):
        if line.endswith(b"\r"):
            line = line[:-1]
        reason, row, unknown_here = ref_line(line, kind, fields)
        if reason is None:
            rows.append(row)
            unknown.update(unknown_here)
        else:
            text = line.decode("utf-8", errors="replace")[:2000]
            quarantine.append({"line_number": number, "reason": reason, "line": text})
    return len(lines), rows, quarantine, dict(unknown)


def run_parser(path, kind, fields, chunk_bytes):
    """All rows and quarantine rows of a file, plus the report, via iter_parsed_chunks."""
    report = ParseReport(file=str(path), kind=kind)
    rows, quarantine = [], []
    for r, q in iter_parsed_chunks(path, kind, fields, chunk_bytes=chunk_bytes, report=report):
        assert r.schema == rows_schema(kind, fields)
        assert q.schema == QUARANTINE_SCHEMA
        rows.extend(r.to_pylist())
        quarantine.extend(q.to_pylist())
    return report, rows, quarantine


def assert_matches_reference(path, kind, fields, chunk_bytes):
    data = path.read_bytes()
    n_lines, ref_rows, ref_quarantine, ref_unknown = ref_parse(data, kind, fields)
    report, rows, quarantine = run_parser(path, kind, fields, chunk_bytes)
    assert rows == ref_rows
    assert [{k: q[k] for k in ("line_number", "reason", "line")} for q in quarantine] == (
        ref_quarantine
    )
    assert {q["file"] for q in quarantine} <= {str(path)}
    assert report.lines == n_lines
    assert report.valid_rows == len(ref_rows)
    assert report.counts == dict(Counter(q["reason"] for q in ref_quarantine))
    assert report.unknown_fields == ref_unknown
    assert report.lines == report.valid_rows + sum(report.counts.values())
    assert report.bytes_read == len(data)
    assert report.features_kept == sum(len(r[f"id_{f}"]) for r in ref_rows for f in fields)
    return report, rows, quarantine
