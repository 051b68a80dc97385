"""Writing Ali-CCP text: vectorised line builders (pyarrow string kernels, no Python per line).

Columns in, one ``large_string`` per line out (each line carries its ``\\n``); :func:`text_bytes`
gives the bytes to write. The synthetic generator, the benchmarks and the tests all write
through here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rec_pipeline.data.aliccp.format import FEATURE_SEP, ID_SEP, VALUE_SEP

TEXT = pa.large_string()
_EMPTY = pa.scalar("", type=TEXT)
_COMMA = pa.scalar(",", type=TEXT)
NEWLINE = pa.scalar("\n", type=TEXT)


def int_text(values: np.ndarray) -> pa.Array:
    """Integers as decimal text."""
    return pc.cast(pa.array(np.asarray(values, dtype=np.int64)), TEXT)


def float_text(values: np.ndarray) -> pa.Array:
    """float32 values as the shortest text that reads back as the same float32 (``1e-10``, ``1``)."""
    return pc.cast(pa.array(np.asarray(values, dtype=np.float32)), TEXT)


def concat(*parts: Any) -> pa.Array:
    """Element-wise concatenation of string arrays and scalars, no separator."""
    return pc.binary_join_element_wise(*parts, _EMPTY)


def join_columns(*columns: Any) -> pa.Array:
    """Element-wise join of header columns and the feature list with commas."""
    return pc.binary_join_element_wise(*columns, _COMMA)


def rows_from_tokens(tokens: pa.Array, counts: np.ndarray) -> pa.Array:
    """Concatenate consecutive tokens into one string per row (zero-copy, no separator).

    ``tokens`` (large_string) are ordered by row; row r owns the next ``counts[r]`` of them.
    """
    n = len(counts)
    if len(tokens) == 0:
        return pa.LargeStringArray.from_buffers(
            n, pa.py_buffer(np.zeros(n + 1, dtype=np.int64)), pa.py_buffer(b"")
        )
    buffers = tokens.buffers()
    token_offsets = np.frombuffer(buffers[1], dtype=np.int64)[
        tokens.offset : tokens.offset + len(tokens) + 1
    ]
    row_ends = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=row_ends[1:])
    offsets = np.ascontiguousarray(token_offsets[row_ends])
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), buffers[2])


def text_bytes(lines: pa.Array) -> memoryview:
    """The bytes of a large_string array's values, back to back (lines carry their newline)."""
    buffers = lines.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64)
    start, end = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    return memoryview(buffers[2])[start:end]


def feature_lists(
    fields: Sequence[str],
    field_of: np.ndarray,
    ids: np.ndarray,
    values: pa.Array,
    per_line: np.ndarray,
) -> pa.Array:
    """One feature list per line: ``field\\x02id\\x03value`` joined by ``\\x01``.

    field_of: [n_feat] index into ``fields``; ids: [n_feat] int; values: [n_feat] text
    (:func:`float_text`, or preformatted); per_line: [n_lines] features of each line, in order.
    """
    prefix = pa.array([f"{f}{ID_SEP}" for f in fields], type=TEXT).take(pa.array(field_of))
    tokens = concat(prefix, int_text(ids), pa.scalar(VALUE_SEP, type=TEXT), values.cast(TEXT))
    offsets = np.zeros(len(per_line) + 1, dtype=np.int64)
    np.cumsum(per_line, out=offsets[1:])
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), tokens)
    return pc.binary_join(lists, pa.scalar(FEATURE_SEP, type=TEXT))


def skeleton_lines(
    sample_id: np.ndarray,
    click: np.ndarray,
    conversion: np.ndarray,
    common_feature_index: pa.Array,
    feature_num: np.ndarray,
    feature_list: pa.Array,
) -> pa.Array:
    """``sample_id,click,conversion,common_feature_index,feature_num,feature_list\\n`` lines."""
    line = join_columns(
        int_text(sample_id),
        int_text(click),
        int_text(conversion),
        common_feature_index.cast(TEXT),
        int_text(feature_num),
        feature_list.cast(TEXT),
    )
    return concat(line, NEWLINE)


def common_lines(
    common_feature_index: pa.Array, feature_num: np.ndarray, feature_list: pa.Array
) -> pa.Array:
    """``common_feature_index,feature_num,feature_list\\n`` lines."""
    line = join_columns(
        common_feature_index.cast(TEXT), int_text(feature_num), feature_list.cast(TEXT)
    )
    return concat(line, NEWLINE)
