"""Per-line reference checks in plain Python: the rejection reason of one line, odd tokens.

Only lines the vectorised parser rejects, and valid tokens it does not handle (exponents, ``+``
signs, more than 15 significant digits), come here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

from rec_pipeline.data.aliccp.format import HEADER_COMMAS, SKELETON_KIND

_INT64_MAX = 2**63 - 1
_FLOAT_RE = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SEPARATOR_BYTES = frozenset(b"\x01\x02\x03")
_ALLOWED_BYTES = bytes(b for b in range(256) if 0x20 <= b <= 0x7E or b in _SEPARATOR_BYTES)


def int_or_none(tok: bytes) -> int | None:
    if not tok.isdigit():  # bytes.isdigit: ASCII digits only, False when empty
        return None
    value = int(tok)
    return value if value <= _INT64_MAX else None


def float32_or_none(tok: bytes) -> np.float32 | None:
    if _FLOAT_RE.fullmatch(tok) is None:
        return None
    with np.errstate(over="ignore"):
        value = np.float32(float(tok))
    return value if math.isfinite(value) else None


def line_reason(line: bytes, kind: str) -> str | None:
    """The rejection reason of one line (without its newline), or None when it is valid."""
    if not line:
        return "empty_line"
    if line.translate(None, _ALLOWED_BYTES):
        return "garbage_bytes"
    cols = line.split(b",")
    if len(cols) != HEADER_COMMAS[kind] + 1:
        return "wrong_column_count"
    if kind == SKELETON_KIND:
        sample_id, click, conversion, cfi, feature_num, feature_list = cols
        if int_or_none(sample_id) is None:
            return "bad_number"
        if click not in (b"0", b"1") or conversion not in (b"0", b"1"):
            return "bad_number"
    else:
        cfi, feature_num, feature_list = cols
        click = conversion = b""
    if not cfi or _SEPARATOR_BYTES.intersection(cfi):
        return "bad_common_feature_index"
    n_declared = int_or_none(feature_num)
    if n_declared is None:
        return "bad_number"
    features = []
    if feature_list:
        for feature in feature_list.split(b"\x01"):
            parts = feature.split(b"\x02")
            if len(parts) != 2 or not parts[0] or b"\x03" in parts[0]:
                return "bad_feature_list"
            id_value = parts[1].split(b"\x03")
            if len(id_value) != 2:
                return "bad_feature_list"
            features.append(id_value)
    for fid, value in features:
        if int_or_none(fid) is None or float32_or_none(value) is None:
            return "bad_number"
    if n_declared != len(features):
        return "feature_num_mismatch"
    if click == b"0" and conversion == b"1":
        return "click0_conversion1"
    return None


class PythonTokens:
    """Re-checks, in Python, the tokens the vectorised parsers did not accept."""

    def __init__(self, b: np.ndarray, parse: Callable[[bytes], object]):
        self.b, self.parse = b, parse

    def fix(
        self, values: np.ndarray, ok: np.ndarray, start: np.ndarray, end: np.ndarray
    ) -> np.ndarray:
        """Fill ``values`` where ``ok`` is False and the token is valid; return the bad mask."""
        bad = ~ok
        todo = np.flatnonzero(bad)
        if todo.size:
            b, parse = self.b, self.parse
            for i in todo.tolist():
                v = parse(b[start[i] : end[i]].tobytes())
                if v is not None:
                    values[i] = v
                    bad[i] = False
        return bad
