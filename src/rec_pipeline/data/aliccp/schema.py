"""Arrow schemas of the parser's outputs and the checks of its ``kind`` / ``fields`` arguments."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from rec_pipeline.data.aliccp.format import COMMON_KIND, HEADER_COMMAS, SKELETON_KIND

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string(), nullable=False),
        pa.field("line_number", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("line", pa.string(), nullable=False),
    ]
)


def rows_schema(kind: str, fields: Sequence[str]) -> pa.Schema:
    """Schema of the ``rows`` tables for ``kind`` and the configured ``fields``."""
    check_kind(kind)
    cols = []
    if kind == SKELETON_KIND:
        cols += [
            pa.field("sample_id", pa.int64(), nullable=False),
            pa.field("click", pa.int8(), nullable=False),
            pa.field("conversion", pa.int8(), nullable=False),
        ]
    cols.append(pa.field("common_feature_index", pa.string(), nullable=False))
    for f in fields:
        cols.append(pa.field(f"id_{f}", pa.list_(pa.int64()), nullable=False))
        cols.append(pa.field(f"w_{f}", pa.list_(pa.float32()), nullable=False))
    return pa.schema(cols)


def check_kind(kind: str) -> None:
    if kind not in HEADER_COMMAS:
        raise ValueError(f"kind must be {SKELETON_KIND!r} or {COMMON_KIND!r}, got {kind!r}")


def check_fields(fields: Sequence[str]) -> list[str]:
    if isinstance(fields, str):
        raise TypeError("fields must be a sequence of field names, not a string")
    out = [str(f) for f in fields]
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate field names in {out}")
    for f in out:
        if not f or not all(0x20 <= ord(ch) <= 0x7E and ch != "," for ch in f):
            raise ValueError(f"invalid field name {f!r}: expected a printable ASCII token")
    return out
