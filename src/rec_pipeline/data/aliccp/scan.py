"""Byte-level structure of a slice of lines: separator scan, line-shape check, cutting.

A slice is scanned once with numpy for the structural bytes (``, \\x01 \\x02 \\x03 \\n`` and
anything invalid); a line's structure is checked from the sequence of separator classes (allowed
transitions plus a comma count per line), so no Python code runs per line.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

# Separator classes. Byte -> class; 0 means "ordinary printable byte".
C_X01, C_X02, C_X03, C_COMMA, C_NL, C_BAD = 1, 2, 3, 4, 5, 6
_CLASS = np.full(256, C_BAD, dtype=np.uint8)
_CLASS[0x20:0x7F] = 0
_CLASS[[1, 2, 3, ord(","), ord("\n")]] = [C_X01, C_X02, C_X03, C_COMMA, C_NL]
# Allowed (previous class, next class) pairs, indexed prev * 8 + next. A valid line is
# ",,...,"  then either nothing or  "\x02\x03" ("\x01\x02\x03")*  then "\n".
_ALLOWED_STEP = np.zeros(64, dtype=bool)
for _a, _b in [
    (C_COMMA, C_COMMA),
    (C_COMMA, C_X02),
    (C_COMMA, C_NL),
    (C_NL, C_COMMA),
    (C_X02, C_X03),
    (C_X03, C_X01),
    (C_X03, C_NL),
    (C_X01, C_X02),
]:
    _ALLOWED_STEP[_a * 8 + _b] = True


def check_structure(sp: np.ndarray, cls: np.ndarray, nc: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-line structure check from the separator classes (``nc`` commas per valid line).

    Returns term: [n_lines] separator index of each line's '\\n', and bad_struct:
    [n_lines] bool.
    """
    term = np.flatnonzero(cls == C_NL)
    n_lines = term.size
    bad_struct = np.zeros(n_lines, dtype=bool)
    step = (cls[:-1] << np.uint8(3)) | cls[1:]  # prev * 8 + next, [n_seps - 1]
    bad_steps = np.flatnonzero(~np.take(_ALLOWED_STEP, step)) + 1  # separator entered
    bad_struct[0] = cls[0] != C_COMMA
    if bad_steps.size:
        bad_struct[np.searchsorted(term, bad_steps)] = True
    # Commas can only open a line (transitions), so "exactly nc commas" is: separator
    # first + nc - 1 is a comma of this line and the next one is not.
    first = np.empty(n_lines, dtype=np.int64)  # separator index of each line's first sep
    first[0] = 0
    first[1:] = term[:-1] + 1
    last_comma = first + (nc - 1)
    top = cls.size - 1
    bad_struct |= last_comma >= term
    bad_struct |= np.take(cls, np.minimum(last_comma, top)) != C_COMMA
    bad_struct |= np.take(cls, np.minimum(last_comma + 1, top)) == C_COMMA
    # No feature: the text after the last comma must be empty too.
    no_features = np.flatnonzero(last_comma + 1 == term)
    if no_features.size:
        after_comma = np.take(sp, np.minimum(last_comma[no_features], top)) + 1
        bad_struct[no_features] |= np.take(sp, term[no_features]) != after_comma
    return term, bad_struct


def gather_strings(b: np.ndarray, start: np.ndarray, end: np.ndarray) -> pa.Array:
    """pa.string() array of the byte ranges [start, end) of b (all ASCII, checked earlier)."""
    n = end - start
    if n.size and (n == n[0]).all():  # the usual case: all the same length, one 2-D gather
        data = np.take(b, start[:, None] + np.arange(n[0]))  # [n_strings, length]
        offsets = np.arange(n.size + 1, dtype=np.int64) * n[0]
    else:
        offsets = np.zeros(n.size + 1, dtype=np.int64)
        np.cumsum(n, out=offsets[1:])
        data = np.take(b, np.repeat(start - offsets[:-1], n) + np.arange(offsets[-1]))
    return pa.LargeStringArray.from_buffers(
        n.size, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))
    ).cast(pa.string())


def scan(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions and classes of the separator-class bytes of b: [n_seps] int64, [n_seps] uint8."""
    # Ordinary bytes are 0x2D-0x7E ('-' to '~') and 0x20-0x2B; one wrapping subtract and one
    # compare find everything else (0x20-0x2B are then dropped again below, they are rare).
    candidates = (b - np.uint8(0x2D)) > np.uint8(0x7E - 0x2D)
    sp = np.flatnonzero(candidates)
    cls = np.take(_CLASS, np.take(b, sp))
    if not cls.all():
        real = cls != 0
        sp, cls = sp[real], cls[real]
    return sp, cls


def after_last_newline(b: np.ndarray) -> int:
    """Index just past the last '\\n' of b, 0 when there is none."""
    hi = b.size
    step = 1 << 16
    while hi > 0:
        lo = max(0, hi - step)
        hits = np.flatnonzero(b[lo:hi] == ord("\n"))
        if hits.size:
            return lo + int(hits[-1]) + 1
        hi = lo
        step *= 2
    return 0


def slices(b: np.ndarray, size: int) -> Iterator[tuple[int, int]]:
    """Cut b (whole lines) into [lo, hi) ranges of about ``size`` bytes, at line ends."""
    lo = 0
    while b.size - lo > size + size // 2:
        target = lo + size
        step = 1 << 14
        while True:  # first '\n' at or after target
            hits = np.flatnonzero(b[target : target + step] == ord("\n"))
            if hits.size or target + step >= b.size:
                break
            step *= 4
        hi = target + int(hits[0]) + 1  # b ends with '\n', so there is one
        yield lo, hi
        lo = hi
    if lo < b.size:
        yield lo, b.size
