"""Fast, bounded-memory parser for the raw Ali-CCP text files.

Format
------
``sample_skeleton_*.csv``: ``sample_id,click,conversion,common_feature_index,feature_num,feature_list``
``common_features_*.csv``: ``common_feature_index,feature_num,feature_list``

``feature_list`` is features joined by ``\\x01``; a feature is ``field\\x02feature_id\\x03value``.
Lines end in ``\\n`` (``\\r\\n`` is accepted); the last line may lack its newline.

API
---
* :class:`FileParser` ``(path, kind, fields, chunk_bytes)``: ``.chunks()`` yields one
  ``(rows, quarantine)`` pair of :class:`pyarrow.Table` per chunk of the file and keeps
  ``.report`` (a :class:`ParseReport`) up to date as the chunks are consumed.
* :func:`iter_parsed_chunks` is the same as a plain generator; pass ``report=ParseReport(...)``
  (or any report) to have each chunk's counts added into it.
* :func:`parse_file` drives the chunks (calling ``on_chunk(rows, quarantine)`` for each), and
  returns ``ParseResult(report, quarantine)``; it raises :class:`NoValidRowsError` when the file
  is empty or holds no valid row. ``report.raise_if_no_rows()`` does the same check for callers
  that drive :func:`iter_parsed_chunks` themselves.

``rows`` columns (schema: :func:`rows_schema`): skeleton ``sample_id`` int64, ``click`` int8,
``conversion`` int8, ``common_feature_index`` string; common ``common_feature_index`` string;
then for each configured field ``f`` in order ``id_{f}`` list<int64> and ``w_{f}`` list<float32>
(the features of that field in file order; an absent field is an empty list, never null).
``quarantine`` columns (:data:`QUARANTINE_SCHEMA`): ``file``, ``line_number`` (1-based),
``reason``, ``line`` (raw text, undecodable bytes replaced, cut to 2000 characters).

Validation
----------
A line is rejected whole, counted under the first reason that applies, in this order:

1. ``empty_line``: nothing between two newlines.
2. ``garbage_bytes``: a byte outside printable ASCII (0x20-0x7E) other than the separators
   ``\\x01 \\x02 \\x03`` (NUL, tab, a stray ``\\r``, bytes >= 0x7F...).
3. ``wrong_column_count``: not exactly 6 (skeleton) / 3 (common) comma-separated columns.
4. ``bad_number``: ``sample_id`` or ``feature_num`` not a plain non-negative int64 (ASCII digits
   only), or ``click`` / ``conversion`` not exactly ``0`` / ``1``;
   ``bad_common_feature_index``: empty, or holding a separator byte.
   (Header columns are checked left to right; the first failing one names the reason.)
5. ``bad_feature_list``: the list is not ``T\\x02T\\x03T`` joined by ``\\x01`` (a missing,
   doubled or trailing separator, ...) or a field token is empty. An empty list is allowed.
6. ``bad_number``: a feature id that is not a plain non-negative int64, or a value that is not
   a finite float32 decimal ``[+-]?(d+[.d*]|.d+)([eE][+-]?d+)?``.
7. ``feature_num_mismatch``: ``feature_num`` differs from the number of features.
8. ``click0_conversion1`` (skeleton only): a conversion without a click.

Every rejected line is also a quarantine row; ``lines == valid_rows + sum(counts.values())``.
Features of a field that is not in ``fields`` are ignored and counted per field token in
``unknown_fields`` (the line stays valid; past 4096 distinct unknown tokens, further ones are
counted together under ``"(other)"``). Blank lines count as lines (``empty_line``).

How it is fast
--------------
The file is read in chunks of ``chunk_bytes`` into one reused buffer, cut after the last
newline (the rest is carried over; the buffer grows while a single line is longer than a
chunk). Each chunk is parsed in ~1 MB slices cut at line ends, so that the temporaries stay in
the CPU caches; the chunk's tables hold one record batch per slice (``combine_chunks()`` gives
contiguous arrays). A slice is scanned once with numpy for the structural bytes
(``, \\x01 \\x02 \\x03 \\n`` and anything invalid); line structure is checked from the sequence
of separator classes (allowed transitions plus a comma count per line), and every token is
located by the separators around it, so no Python code runs per line or per feature. Numbers
are read eight bytes at a time: the 8 (or 16) bytes ending at a token's last byte are gathered
as one little-endian uint64, XOR ``'0'``, the bytes before the token are shifted out, and the
digits are validated and combined with SWAR arithmetic; a decimal point is found the same way
and squeezed out, so ``value = mantissa / 10**fraction_digits`` (correctly rounded: identical to
``float(text)``). Field tokens are packed into uint64 keys and looked up in a tiny perfect hash.
Rejected lines are re-examined one by one in Python, only to name the reason; odd but valid
tokens (exponents, ``+`` signs, more than 15 significant digits) also go through Python.
Measured on one core (benchmarks/README.md): ~200-270 MB/s on skeleton files, ~300-350 MB/s on
common-feature files; peak memory is the chunk buffer plus a few times ``chunk_bytes`` of output
and temporaries (about +75 MB over the interpreter at the 16 MB default), flat in the file size.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa

__all__ = [
    "COMMON_KIND",
    "DEFAULT_CHUNK_BYTES",
    "OTHER_FIELDS",
    "QUARANTINE_SCHEMA",
    "SKELETON_KIND",
    "FileParser",
    "NoValidRowsError",
    "ParseReport",
    "ParseResult",
    "iter_parsed_chunks",
    "parse_file",
    "rows_schema",
]

SKELETON_KIND = "skeleton"
COMMON_KIND = "common"
DEFAULT_CHUNK_BYTES = 16 << 20
QUARANTINE_LINE_CHARS = 2000

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string(), nullable=False),
        pa.field("line_number", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("line", pa.string(), nullable=False),
    ]
)

# Number of header columns before feature_list, i.e. commas per valid line.
_N_COMMAS = {SKELETON_KIND: 5, COMMON_KIND: 2}
_INT64_MAX = 2**63 - 1

# ---------------------------------------------------------------------------------------------
# Reports and errors


class NoValidRowsError(ValueError):
    """A raw file is empty or holds no valid row."""

    def __init__(self, path: str | os.PathLike, report: ParseReport | None = None):
        self.path = str(path)
        self.report = report
        detail = ""
        if report is not None:
            if report.lines == 0:
                detail = " (the file is empty)"
            else:
                reasons = ", ".join(f"{k}={v}" for k, v in sorted(report.counts.items()))
                detail = f" ({report.lines} lines, all rejected: {reasons})"
        super().__init__(f"no valid row in raw Ali-CCP file {self.path}{detail}")

    def __reduce__(self):
        return type(self), (self.path, self.report)


@dataclass
class ParseReport:
    """Data-quality counts for one file (or several, once merged)."""

    file: str
    kind: str
    lines: int = 0  # lines seen, blank ones included (they count as "empty_line")
    valid_rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # reason -> rejected lines
    unknown_fields: dict[str, int] = field(default_factory=dict)  # field -> ignored features
    features_kept: int = 0
    bytes_read: int = 0

    @property
    def rejected(self) -> int:
        return sum(self.counts.values())

    def add(self, other: ParseReport) -> ParseReport:
        """Add ``other``'s counts into this report, in place; returns ``self``."""
        self.lines += other.lines
        self.valid_rows += other.valid_rows
        self.features_kept += other.features_kept
        self.bytes_read += other.bytes_read
        for mine, theirs in (
            (self.counts, other.counts),
            (self.unknown_fields, other.unknown_fields),
        ):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        return self

    def merge(self, other: ParseReport) -> ParseReport:
        """A new report holding the sum of both (``file`` / ``kind`` kept if equal)."""
        out = ParseReport(
            file=self.file if self.file == other.file else f"{self.file}+{other.file}",
            kind=self.kind if self.kind == other.kind else f"{self.kind}+{other.kind}",
            counts=dict(self.counts),
            unknown_fields=dict(self.unknown_fields),
        )
        out.lines, out.valid_rows = self.lines, self.valid_rows
        out.features_kept, out.bytes_read = self.features_kept, self.bytes_read
        return out.add(other)

    def raise_if_no_rows(self) -> None:
        if self.valid_rows == 0:
            raise NoValidRowsError(self.file, self)

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "kind": self.kind,
            "lines": self.lines,
            "valid_rows": self.valid_rows,
            "rejected": self.rejected,
            "counts": dict(sorted(self.counts.items())),
            "unknown_fields": dict(sorted(self.unknown_fields.items())),
            "features_kept": self.features_kept,
            "bytes_read": self.bytes_read,
        }


class ParseResult(NamedTuple):
    report: ParseReport
    quarantine: pa.Table  # the first ``max_quarantine_rows`` quarantined lines


def rows_schema(kind: str, fields: Sequence[str]) -> pa.Schema:
    """Schema of the ``rows`` tables for ``kind`` and the configured ``fields``."""
    _check_kind(kind)
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


def _check_kind(kind: str) -> None:
    if kind not in _N_COMMAS:
        raise ValueError(f"kind must be {SKELETON_KIND!r} or {COMMON_KIND!r}, got {kind!r}")


def _check_fields(fields: Sequence[str]) -> list[str]:
    if isinstance(fields, str):
        raise TypeError("fields must be a sequence of field names, not a string")
    out = [str(f) for f in fields]
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate field names in {out}")
    for f in out:
        if not f or not all(0x20 <= ord(ch) <= 0x7E and ch != "," for ch in f):
            raise ValueError(f"invalid field name {f!r}: expected a printable ASCII token")
    return out


# ---------------------------------------------------------------------------------------------
# Slow, per-line reference checks (only for lines the vectorised path rejects, and odd tokens)

_FLOAT_RE = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SEPARATOR_BYTES = frozenset(b"\x01\x02\x03")
_ALLOWED_BYTES = bytes(b for b in range(256) if 0x20 <= b <= 0x7E or b in _SEPARATOR_BYTES)


def _int_or_none(tok: bytes) -> int | None:
    if not tok.isdigit():  # bytes.isdigit: ASCII digits only, False when empty
        return None
    value = int(tok)
    return value if value <= _INT64_MAX else None


def _float32_or_none(tok: bytes) -> np.float32 | None:
    if _FLOAT_RE.fullmatch(tok) is None:
        return None
    with np.errstate(over="ignore"):
        value = np.float32(float(tok))
    return value if math.isfinite(value) else None


def _line_reason(line: bytes, kind: str) -> str | None:
    """The rejection reason of one line (without its newline), or None when it is valid."""
    if not line:
        return "empty_line"
    if line.translate(None, _ALLOWED_BYTES):
        return "garbage_bytes"
    cols = line.split(b",")
    if len(cols) != _N_COMMAS[kind] + 1:
        return "wrong_column_count"
    if kind == SKELETON_KIND:
        sample_id, click, conversion, cfi, feature_num, feature_list = cols
        if _int_or_none(sample_id) is None:
            return "bad_number"
        if click not in (b"0", b"1") or conversion not in (b"0", b"1"):
            return "bad_number"
    else:
        cfi, feature_num, feature_list = cols
        click = conversion = b""
    if not cfi or _SEPARATOR_BYTES.intersection(cfi):
        return "bad_common_feature_index"
    n_declared = _int_or_none(feature_num)
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
        if _int_or_none(fid) is None or _float32_or_none(value) is None:
            return "bad_number"
    if n_declared != len(features):
        return "feature_num_mismatch"
    if click == b"0" and conversion == b"1":
        return "click0_conversion1"
    return None


# ---------------------------------------------------------------------------------------------
# Vectorised building blocks

# Bytes kept in front of the chunk data, so an 8- or 16-byte window ending at any token end can
# be read without bounds checks (the bytes before a token are masked out anyway).
_PAD = 64
# A chunk is parsed in slices of about this many bytes (cut at line ends): the temporaries of
# one slice stay in the CPU caches, which is worth ~1.5x over one pass on a 16 MB chunk.
_SLICE_BYTES = 1 << 20
# Distinct unknown field tokens tracked by name; any further ones are counted as "(other)".
_MAX_UNKNOWN_FIELDS = 4096
OTHER_FIELDS = "(other)"

# Separator classes. Byte -> class; 0 means "ordinary printable byte".
_C_X01, _C_X02, _C_X03, _C_COMMA, _C_NL, _C_BAD = 1, 2, 3, 4, 5, 6
_CLASS = np.full(256, _C_BAD, dtype=np.uint8)
_CLASS[0x20:0x7F] = 0
_CLASS[[1, 2, 3, ord(","), ord("\n")]] = [_C_X01, _C_X02, _C_X03, _C_COMMA, _C_NL]
# Allowed (previous class, next class) pairs, indexed prev * 8 + next. A valid line is
# ",,...,"  then either nothing or  "\x02\x03" ("\x01\x02\x03")*  then "\n".
_ALLOWED_STEP = np.zeros(64, dtype=bool)
for _a, _b in [
    (_C_COMMA, _C_COMMA),
    (_C_COMMA, _C_X02),
    (_C_COMMA, _C_NL),
    (_C_NL, _C_COMMA),
    (_C_X02, _C_X03),
    (_C_X03, _C_X01),
    (_C_X03, _C_NL),
    (_C_X01, _C_X02),
]:
    _ALLOWED_STEP[_a * 8 + _b] = True

# Numbers are parsed as "digit words": the 8 bytes ending at a token's last byte, read as one
# little-endian uint64 (the token's first byte is the lowest of its bytes), XOR '0' in every
# byte (so a digit byte holds its value), with the bytes before the token cleared to 0.
_U64 = np.uint64


def _rep(byte: int) -> np.uint64:
    return _U64(int.from_bytes(bytes([byte]) * 8, "little"))


_ZEROS8 = _rep(ord("0"))
_HIGH_NIBBLES = _rep(0xF0)
_SIXES = _rep(0x06)
_BIT4 = _rep(0x10)  # set in '.' ^ '0' and '-' ^ '0', clear in every digit value
_DOT_T = _U64(ord(".") ^ ord("0"))
_MINUS_T = _U64(ord("-") ^ ord("0"))
_BYTE_INDEX = _U64(0x0001020304050607)  # 2**(8q) * _BYTE_INDEX >> 56 == q
_POW10 = 10.0 ** np.arange(17)
_ZERO, _ONE, _THREE, _EIGHT, _SIXTY_FOUR = _U64(0), _U64(1), _U64(3), _U64(8), _U64(64)


def _digit_words(u64: np.ndarray, off: int, end: np.ndarray, keep_bits: np.ndarray) -> np.ndarray:
    """Digit words of the windows ending before ``end``; only the top ``keep_bits`` bits kept."""
    t = u64[end + off]  # (not np.take: it would copy the strided view)
    t ^= _ZEROS8
    drop = _SIXTY_FOUR - keep_bits  # shifts by 64 give 0 in numpy
    t >>= drop
    t <<= drop
    return t


def _digits_ok(t: np.ndarray) -> np.ndarray:
    """Every byte of the digit word is 0-9 (a byte >= 10 sets a high nibble of t or t + 6)."""
    return ((t | (t + _SIXES)) & _HIGH_NIBBLES) == 0


def _value8(t: np.ndarray) -> np.ndarray:
    """Value of the 8 digits of a digit word (SWAR: pairs, then quads, then all 8)."""
    v = (t * _U64(2561)) >> _EIGHT
    v = ((v & _U64(0x00FF00FF00FF00FF)) * _U64(6553601)) >> _U64(16)
    return ((v & _U64(0x0000FFFF0000FFFF)) * _U64(42949672960001)) >> _U64(32)


def _uint_tokens(
    u64: np.ndarray, off: int, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Parse tokens [start, end) as non-negative ints. Returns (int64 values, ok).

    ``u64[p + off]`` is the window whose last byte is chunk byte p - 1. ok is False for
    anything the fast path does not handle (not only invalid tokens: more than 16 digits);
    callers re-check those with :func:`_int_or_none`.
    """
    n = (end - start).view(np.uint64)  # token lengths, [n_tokens]
    t = _digit_words(u64, off, end, np.minimum(n, _EIGHT) << _THREE)
    ok = _digits_ok(t)
    ok &= (n - _ONE) < 16  # 1 <= n <= 16 (n = 0 wraps around)
    value = _value8(t)
    long = np.flatnonzero(n > _EIGHT)  # the digits before the last 8: a second word
    if long.size:
        keep_hi = np.minimum(n[long] - _EIGHT, _EIGHT) << _THREE
        t_hi = _digit_words(u64, off - 8, end[long], keep_hi)
        ok[long] &= _digits_ok(t_hi)
        value[long] += _value8(t_hi) * _U64(100_000_000)
    return value.view(np.int64), ok


def _squeeze_dot(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Remove the lowest '.' from digit words: (words, has_dot 0/1, fraction digits, dot_ok).

    The bytes below the dot move up one byte (the lowest becomes 0); fraction digits are the
    bytes above the dot. dot_ok is False when the lowest byte with bit 4 set is not a '.'.
    """
    marks = t & _BIT4
    p = (marks & (_ZERO - marks)) >> _U64(4)  # 2**(8q) for the lowest mark at byte q, or 0
    has = np.minimum(p, _ONE)
    below = p - has  # bits under the dot byte (none without a dot)
    above = ~((p << _EIGHT) - has)  # bits over the dot byte (all without a dot)
    dot_ok = (t & (p * _U64(0xFF))) == p * _DOT_T
    t = (t & above) | ((t & below) << _EIGHT)
    frac = (_U64(7) - ((p * _BYTE_INDEX) >> _U64(56))) * has
    return t, has, frac, dot_ok


def _decimal_tokens(
    u64: np.ndarray, off: int, b: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Parse tokens [start, end) as ``-?digits[.digits]`` (<= 16 bytes, <= 15 digits).

    Returns (float64 values, ok); ok False means "not handled here" (re-check in Python).
    A value is mantissa / 10**fraction_digits with both exact in float64, so the quotient is
    the correctly rounded value: the same double as ``float(text)``.
    """
    n = (end - start).view(np.uint64)
    keep = np.minimum(n, _EIGHT) << _THREE
    t = _digit_words(u64, off, end, keep)
    neg = np.take(b, start) == ord("-")  # for an empty token this is the separator
    any_neg = bool(neg.any())
    if any_neg:  # the sign is the token's first byte, at bit 64 - keep: make it a 0 digit
        t ^= (neg.astype(np.uint64) * _MINUS_T) << (_SIXTY_FOUR - keep)
    t, has_dot, frac, ok = _squeeze_dot(t)
    ok &= _digits_ok(t)
    ok &= (n - _ONE) < 8  # 1 <= n <= 8 here; longer tokens below
    ok &= n > has_dot + neg  # at least one digit
    value = _value8(t).astype(np.float64)
    value /= np.take(_POW10, frac)
    if any_neg:
        np.negative(value, out=value, where=neg)
    long = np.flatnonzero(n > _EIGHT)
    if long.size:
        value[long], ok[long] = _decimal_tokens_16(u64, off, b, start[long], end[long])
    return value, ok


def _decimal_tokens_16(
    u64: np.ndarray, off: int, b: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_decimal_tokens` for tokens of 9 to 16 bytes: two digit words.

    hi holds the 8 bytes before the token's last 8, lo the last 8. The dot is squeezed out of
    the word that holds it; when that is lo, hi's top byte moves into lo's freed low byte.
    """
    n = (end - start).view(np.uint64)
    lo = _digit_words(u64, off, end, np.full(n.size, _SIXTY_FOUR))
    keep_hi = np.minimum(n - _EIGHT, _EIGHT) << _THREE
    hi = _digit_words(u64, off - 8, end, keep_hi)
    neg = np.take(b, start) == ord("-")
    hi ^= (neg.astype(np.uint64) * _MINUS_T) << (_SIXTY_FOUR - keep_hi)
    lo_sq, lo_has, lo_frac, lo_ok = _squeeze_dot(lo)
    hi_sq, hi_has, hi_frac, hi_ok = _squeeze_dot(hi)
    in_lo = lo_has.astype(bool)
    lo = np.where(in_lo, lo_sq | (hi >> _U64(56)), lo)
    hi = np.where(in_lo, hi << _EIGHT, hi_sq)
    frac = np.where(in_lo, lo_frac, hi_frac + _EIGHT * hi_has)
    has_dot = lo_has | hi_has
    ok = np.where(in_lo, lo_ok, hi_ok) & _digits_ok(lo) & _digits_ok(hi)
    ok &= (n - _ONE) < 16
    n_digits = n - has_dot - neg
    ok &= (n_digits >= _ONE) & (n_digits <= _U64(15))  # mantissa < 10**15 < 2**53: exact
    mantissa = _value8(hi) * _U64(100_000_000) + _value8(lo)
    value = mantissa.astype(np.float64) / np.take(_POW10, np.minimum(frac, _U64(16)))
    return np.where(neg, -value, value), ok


def _gather_strings(b: np.ndarray, start: np.ndarray, end: np.ndarray) -> pa.Array:
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


class _FieldTable:
    """Field token -> slot: 0..len(fields)-1 for configured fields, then unknown tokens.

    Tokens of up to 8 bytes are looked up as uint64 keys (the token's bytes in the top bytes,
    zeros below) in a perfect hash ``(key * mult) >> shift`` over the keys seen so far; longer
    tokens (rare) go through a dict.
    """

    def __init__(self, fields: Sequence[str]):
        self.names: list[str] = list(fields)
        self.n_configured = len(self.names)
        self.slot_of: dict[bytes, int] = {f.encode(): i for i, f in enumerate(self.names)}
        self.other_slot: int | None = None
        self._rebuild()

    @staticmethod
    def key_of(token: bytes) -> int:
        return int.from_bytes(token.rjust(8, b"\0"), "little")

    def _rebuild(self) -> None:
        short = [(self.key_of(t), s) for t, s in self.slot_of.items() if len(t) <= 8]
        keys = np.array([k for k, _ in short], dtype=np.uint64)
        slots = np.array([s for _, s in short], dtype=np.int32)
        bits = max(4, (4 * len(keys)).bit_length())
        rng = np.random.default_rng(0x5EED)
        while True:
            for _ in range(100):
                mult = _U64(int(rng.integers(1, 2**62)) * 2 + 1)
                h = (keys * mult) >> _U64(64 - bits)
                if np.unique(h).size == keys.size:
                    break
            else:
                bits += 1
                continue
            break
        # Entry -1 of keys/slots is a sentinel: key 0 never occurs (a token has a non-NUL byte).
        self.keys = np.append(keys, _U64(0))
        self.slots = np.append(slots, np.int32(-1))
        self.table = np.full(1 << bits, keys.size, dtype=np.int32)
        self.table[h] = np.arange(keys.size, dtype=np.int32)
        self.mult, self.shift = mult, _U64(64 - bits)

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        j = np.take(self.table, (keys * self.mult) >> self.shift)
        slot = np.take(self.slots, j)
        hit = np.take(self.keys, j) == keys
        if not hit.all():
            slot[~hit] = -1
        return slot

    def _register(self, token: bytes) -> int:
        """Slot of a new unknown token: its own while fewer than the cap, else "(other)"."""
        if len(self.slot_of) - self.n_configured < _MAX_UNKNOWN_FIELDS:
            self.slot_of[token] = len(self.names)
            self.names.append(token.decode("ascii"))
            return self.slot_of[token]
        if self.other_slot is None:
            self.other_slot = len(self.names)
            self.names.append(OTHER_FIELDS)
        return self.other_slot

    def slots_for(
        self, u64: np.ndarray, off: int, b: np.ndarray, start: np.ndarray, end: np.ndarray
    ) -> np.ndarray:
        """Slot per field token [start, end) (tokens are non-empty and ASCII). [n_tokens]."""
        n = (end - start).view(np.uint64)
        keys = u64[end + off]  # (not np.take: it would copy the strided view)
        drop = _SIXTY_FOUR - (np.minimum(n, _EIGHT) << _THREE)
        keys >>= drop
        keys <<= drop
        slot = self._lookup(keys)
        long_tokens = n > _EIGHT
        missing = np.flatnonzero((slot < 0) & ~long_tokens)
        if missing.size:
            n_known_tokens = len(self.slot_of)
            for key in np.unique(keys[missing]).tolist():
                self._register(int(key).to_bytes(8, "little").lstrip(b"\0"))
            if len(self.slot_of) > n_known_tokens:
                self._rebuild()
            found = self._lookup(keys[missing])
            if self.other_slot is not None:
                found[found < 0] = self.other_slot
            slot[missing] = found
        for i in np.flatnonzero(long_tokens).tolist():
            token = b[start[i] : end[i]].tobytes()
            s = self.slot_of.get(token)
            slot[i] = self._register(token) if s is None else s
        return slot


# ---------------------------------------------------------------------------------------------
# The parser


class FileParser:
    """Parses one raw file chunk by chunk; see the module docstring.

    ``chunks()`` yields ``(rows, quarantine)`` per chunk (a chunk is about ``chunk_bytes`` of
    text, cut at a line end; its tables have one record batch per ~1 MB slice, so call
    ``combine_chunks()`` if contiguous arrays are needed) and adds each chunk's counts to
    ``report`` (``last_chunk_report`` holds the latest chunk's alone). Iterate it once.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        kind: str,
        fields: Sequence[str],
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ):
        _check_kind(kind)
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be positive")
        self.path = Path(path)
        self.kind = kind
        self.fields = _check_fields(fields)
        self.chunk_bytes = int(chunk_bytes)
        self.schema = rows_schema(kind, self.fields)
        self.report = ParseReport(file=str(self.path), kind=kind)
        self.last_chunk_report: ParseReport | None = None
        self._n_commas = _N_COMMAS[kind]
        self._field_table = _FieldTable(self.fields)
        self._next_line = 1  # file line number of the next slice's first line
        self._started = False

    # -- reading ----------------------------------------------------------------------------

    def _regions(self) -> Iterator[tuple[np.ndarray, int, int]]:
        """Yield (buf, n, n_file_bytes): buf[_PAD:_PAD+n] holds whole lines ending in '\\n'.

        n_file_bytes is the number of file bytes in the region (n, less a '\\n' added after an
        unterminated last line). One buffer is reused: the bytes after the last newline move
        to its front and the next read appends to them; it grows when a line does not fit.
        """
        step = self.chunk_bytes
        buf = np.zeros(_PAD + step + 1, dtype=np.uint8)
        carry = 0
        with open(self.path, "rb") as fh:
            while True:
                if _PAD + carry + step + 1 > buf.size:
                    grown = np.zeros(_PAD + max(carry + step, 2 * (buf.size - _PAD)) + 1, np.uint8)
                    grown[_PAD : _PAD + carry] = buf[_PAD : _PAD + carry]
                    buf = grown
                got = 0
                view = memoryview(buf)[_PAD + carry : _PAD + carry + step]
                while got < step:
                    k = fh.readinto(view[got:])
                    if not k:
                        break
                    got += k
                n = carry + got
                if got < step:  # end of file
                    if n:
                        n_file = n
                        if buf[_PAD + n - 1] != ord("\n"):
                            buf[_PAD + n] = ord("\n")  # the room for it is the +1 above
                            n += 1
                        yield buf, n, n_file
                    return
                cut = _after_last_newline(buf[_PAD : _PAD + n])
                if cut == 0:
                    carry = n  # one line longer than what we have: read more
                    continue
                yield buf, cut, cut
                carry = n - cut
                buf[_PAD : _PAD + carry] = buf[_PAD + cut : _PAD + n].copy()

    def chunks(self) -> Iterator[tuple[pa.Table, pa.Table]]:
        if self._started:
            raise RuntimeError("FileParser.chunks() can be iterated only once")
        self._started = True
        for buf, n, n_file in self._regions():
            report = ParseReport(file=str(self.path), kind=self.kind, bytes_read=n_file)
            rows, quarantine = [], []
            for lo, hi in _slices(buf[_PAD : _PAD + n], _SLICE_BYTES):
                r, q = self._parse_slice(buf, _PAD + lo, hi - lo, report)
                rows.append(r)
                quarantine.append(q)
            self.report.add(report)
            self.last_chunk_report = report
            yield _concat(rows), _concat(quarantine)

    # -- one slice --------------------------------------------------------------------------

    def _parse_slice(
        self, buf: np.ndarray, base: int, n: int, report: ParseReport
    ) -> tuple[pa.Table, pa.Table]:
        """Parse the whole lines in buf[base : base + n] (base >= _PAD) into ``report``."""
        b = buf[base : base + n]
        sp, cls = _scan(b)
        term, bad_struct = self._check_structure(sp, cls)
        if bad_struct.any():  # "\r\n" line ends? Drop those '\r' (in a copy of the slice).
            bad = sp[cls == _C_BAD]
            crlf = bad[(b[bad] == ord("\r")) & (b[bad + 1] == ord("\n"))]
            if crlf.size:
                keep = np.ones(n, dtype=bool)
                keep[crlf] = False
                n -= crlf.size
                buf, base = np.zeros(_PAD + n + 1, dtype=np.uint8), _PAD
                buf[_PAD : _PAD + n] = b[keep]
                b = buf[_PAD : _PAD + n]
                sp, cls = _scan(b)
                term, bad_struct = self._check_structure(sp, cls)
        # Unaligned uint64 view: u64[i] = bytes buf[i : i + 8] (little-endian), so the window
        # whose last byte is slice byte p - 1 is u64[p + base - 8]. Shape [len(buf) - 7].
        u64 = np.ndarray((buf.size - 7,), dtype="<u8", buffer=buf, strides=(1,))
        return self._parse_lines(b, u64, base - 8, sp, cls, term, bad_struct, report)

    def _check_structure(self, sp: np.ndarray, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-line structure check from the separator classes.

        Returns term: [n_lines] separator index of each line's '\\n', and bad_struct:
        [n_lines] bool.
        """
        nc = self._n_commas
        term = np.flatnonzero(cls == _C_NL)
        n_lines = term.size
        bad_struct = np.zeros(n_lines, dtype=bool)
        step = (cls[:-1] << np.uint8(3)) | cls[1:]  # prev * 8 + next, [n_seps - 1]
        bad_steps = np.flatnonzero(~np.take(_ALLOWED_STEP, step)) + 1  # separator entered
        bad_struct[0] = cls[0] != _C_COMMA
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
        bad_struct |= np.take(cls, np.minimum(last_comma, top)) != _C_COMMA
        bad_struct |= np.take(cls, np.minimum(last_comma + 1, top)) == _C_COMMA
        # No feature: the text after the last comma must be empty too.
        no_features = np.flatnonzero(last_comma + 1 == term)
        if no_features.size:
            after_comma = np.take(sp, np.minimum(last_comma[no_features], top)) + 1
            bad_struct[no_features] |= np.take(sp, term[no_features]) != after_comma
        return term, bad_struct

    def _parse_lines(
        self, b, u64, off, sp, cls, term, bad_struct, report
    ) -> tuple[pa.Table, pa.Table]:
        nc = self._n_commas
        # sp: [n_seps] slice positions of separator-class bytes, cls: [n_seps] their classes.
        # Every line ends with a '\n' separator, so the token before separator i is
        # b[sp[i-1]+1 : sp[i]] (for a line's first separator: from the line start).
        n_lines = term.size
        nl_pos = np.take(sp, term)  # [n_lines] position of each line's '\n'
        line_start = np.empty(n_lines, dtype=np.int64)  # [n_lines]
        line_start[0] = 0
        line_start[1:] = nl_pos[:-1] + 1
        first_line_no = self._next_line
        self._next_line += n_lines
        report.lines += n_lines

        line_idx = np.arange(n_lines)  # [m] slice line index of each structurally valid line
        if bad_struct.any():
            line_idx = np.flatnonzero(~bad_struct)
            keep = np.repeat(~bad_struct, np.diff(term, prepend=-1))
            sp, cls = sp[keep], cls[keep]
            term = np.flatnonzero(cls == _C_NL)
        m = line_idx.size

        # Header tokens: the nc comma-terminated tokens of each line, [m, nc]. The commas are
        # a line's first nc separators.
        first = np.empty(m, dtype=np.int64)
        first[:1] = 0
        first[1:] = term[:-1] + 1
        h_end = np.take(sp, first[:, None] + np.arange(nc))
        h_start = np.empty_like(h_end)
        h_start[:, 1:] = h_end[:, :-1] + 1
        h_start[:, 0] = line_start[line_idx]
        # Features: one per '\x03', [n_feat]. field = b[pf:p2], id = b[p2+1:p3],
        # value = b[p3+1:pv]; the separator before a field is a comma or '\x01' of its line.
        i3 = np.flatnonzero(cls == _C_X03)
        p3 = np.take(sp, i3)
        p2 = np.take(sp, i3 - 1)
        pf = np.take(sp, i3 - 2)
        pf += 1
        pv = np.take(sp, i3 + 1)
        # Features per line: nc commas, then 3F - 1 list separators (F > 0), then '\n'.
        n_list_seps = np.diff(term, prepend=-1) - 1 - nc
        n_feat_line = np.where(n_list_seps > 0, (n_list_seps + 1) // 3, 0)  # [m]
        feat_off = np.zeros(m + 1, dtype=np.int64)  # [m + 1] first feature of each line
        np.cumsum(n_feat_line, out=feat_off[1:])

        bad_tok = np.zeros(m, dtype=bool)  # [m] token-level failure
        py_int = _PythonTokens(b, _int_or_none)
        if self.kind == SKELETON_KIND:
            sample_id, ok = _uint_tokens(u64, off, h_start[:, 0], h_end[:, 0])
            bad_tok |= py_int.fix(sample_id, ok, h_start[:, 0], h_end[:, 0])
            flags = []
            for k in (1, 2):  # click, conversion: exactly one byte, '0' or '1'
                v = np.take(b, h_start[:, k]) - np.uint8(ord("0"))
                bad_tok |= (h_end[:, k] - h_start[:, k] != 1) | (v > 1)
                flags.append(v.view(np.int8))
            click, conversion = flags
        cfi_k, num_k = nc - 2, nc - 1
        bad_tok |= h_end[:, cfi_k] == h_start[:, cfi_k]
        feature_num, ok = _uint_tokens(u64, off, h_start[:, num_k], h_end[:, num_k])
        bad_tok |= py_int.fix(feature_num, ok, h_start[:, num_k], h_end[:, num_k])
        bad_tok |= feature_num != n_feat_line

        bad_feat = pf == p2  # [n_feat] empty field token
        ids, ok = _uint_tokens(u64, off, p2 + 1, p3)
        bad_feat |= py_int.fix(ids, ok, p2 + 1, p3)
        values, ok = _decimal_tokens(u64, off, b, p3 + 1, pv)
        values = values.astype(np.float32)
        bad_feat |= _PythonTokens(b, _float32_or_none).fix(values, ok, p3 + 1, pv)
        if bad_feat.any():
            bad_tok[np.searchsorted(feat_off, np.flatnonzero(bad_feat), side="right") - 1] = True

        good = ~bad_tok  # [m]
        c0c1 = np.zeros(m, dtype=bool)
        if self.kind == SKELETON_KIND:
            c0c1 = good & (click == 0) & (conversion == 1)
            good &= ~c0c1

        # Keep the good lines and their features.
        if not good.all():
            feat_keep = np.repeat(good, n_feat_line)
            pf, p2, ids, values = pf[feat_keep], p2[feat_keep], ids[feat_keep], values[feat_keep]
            n_feat_line = n_feat_line[good]
            h_start, h_end = h_start[good], h_end[good]
            if self.kind == SKELETON_KIND:
                sample_id, click, conversion = sample_id[good], click[good], conversion[good]
        n_rows = n_feat_line.size

        # Group features by field. slot: [n_kept_feat], configured fields first.
        nf = len(self.fields)
        slot = self._field_table.slots_for(u64, off, b, pf, p2)
        known = slot < nf
        n_known = int(np.count_nonzero(known))
        if n_known < slot.size:
            for s, cnt in enumerate(np.bincount(slot[~known] - nf).tolist()):
                if cnt:
                    name = self._field_table.names[nf + s]
                    report.unknown_fields[name] = report.unknown_fields.get(name, 0) + cnt
        # Sort key: field slot, unknown fields last; 8 or 16 bits so numpy uses a radix sort.
        key = np.minimum(slot, nf).astype(np.uint8 if nf < 255 else np.uint16)
        order = np.argsort(key, kind="stable")[:n_known]  # by field, file order within
        ids_sorted, values_sorted = np.take(ids, order), np.take(values, order)
        # counts[f, r]: features of field f in row r, [nf, n_rows].
        row_of = np.repeat(np.arange(n_rows, dtype=np.int64), n_feat_line)  # [n_kept_feat]
        counts = np.bincount(
            (key.astype(np.int64) * n_rows + row_of)[known], minlength=nf * n_rows
        ).reshape(nf, n_rows)
        offsets = np.zeros((nf, n_rows + 1), dtype=np.int32)  # list offsets per field
        np.cumsum(counts, axis=1, out=offsets[:, 1:])
        field_start = np.zeros(nf + 1, dtype=np.int64)  # slice of ids_sorted per field
        np.cumsum(offsets[:, -1], out=field_start[1:])

        columns: list[pa.Array] = []
        if self.kind == SKELETON_KIND:
            columns += [pa.array(sample_id), pa.array(click), pa.array(conversion)]
        columns.append(_gather_strings(b, h_start[:, cfi_k], h_end[:, cfi_k]))
        for f in range(nf):
            lo, hi = field_start[f], field_start[f + 1]
            off_f = pa.array(offsets[f])
            columns.append(pa.ListArray.from_arrays(off_f, pa.array(ids_sorted[lo:hi])))
            columns.append(pa.ListArray.from_arrays(off_f, pa.array(values_sorted[lo:hi])))
        rows = pa.Table.from_arrays(columns, schema=self.schema)
        report.valid_rows += n_rows
        report.features_kept += n_known

        # Quarantine, in file order. Python runs only here, once per rejected line, to name
        # the reason.
        rejected = np.flatnonzero(bad_struct)
        if bad_tok.any() or c0c1.any():
            rejected = np.sort(np.concatenate([rejected, line_idx[bad_tok | c0c1]]))
        is_c0c1 = np.zeros(n_lines, dtype=bool)
        is_c0c1[line_idx[c0c1]] = True
        q_reasons: list[str] = []
        q_text: list[str] = []
        for i in rejected.tolist():
            raw = b[line_start[i] : nl_pos[i]].tobytes()
            if is_c0c1[i]:
                reason = "click0_conversion1"
            else:
                reason = _line_reason(raw, self.kind) or "malformed"
            report.counts[reason] = report.counts.get(reason, 0) + 1
            q_reasons.append(reason)
            # (a character takes at most 4 bytes, so the cut cannot change the kept text)
            text = raw[: 4 * QUARANTINE_LINE_CHARS].decode("utf-8", errors="replace")
            q_text.append(text[:QUARANTINE_LINE_CHARS])
        quarantine = pa.Table.from_arrays(
            [
                pa.array([str(self.path)] * rejected.size, pa.string()),
                pa.array(rejected + first_line_no, pa.int64()),
                pa.array(q_reasons, pa.string()),
                pa.array(q_text, pa.string()),
            ],
            schema=QUARANTINE_SCHEMA,
        )
        return rows, quarantine


class _PythonTokens:
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


def _scan(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _after_last_newline(b: np.ndarray) -> int:
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


def _slices(b: np.ndarray, size: int) -> Iterator[tuple[int, int]]:
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


def _concat(tables: list[pa.Table]) -> pa.Table:
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


# ---------------------------------------------------------------------------------------------
# Convenience drivers


def iter_parsed_chunks(
    path: str | os.PathLike,
    kind: str,
    fields: Sequence[str],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    report: ParseReport | None = None,
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Yield ``(rows, quarantine)`` per chunk of ``path``; memory is bounded by ``chunk_bytes``.

    When ``report`` is given, each chunk's counts are added into it before the chunk is yielded.
    """
    parser = FileParser(path, kind, fields, chunk_bytes)
    for rows, quarantine in parser.chunks():
        if report is not None:
            report.add(parser.last_chunk_report)
        yield rows, quarantine


def parse_file(
    path: str | os.PathLike,
    kind: str,
    fields: Sequence[str],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    on_chunk: Callable[[pa.Table, pa.Table], None] | None = None,
    max_quarantine_rows: int = 10_000,
) -> ParseResult:
    """Parse a whole file; ``on_chunk(rows, quarantine)`` sees every chunk.

    Returns the report and the first ``max_quarantine_rows`` quarantined lines (the counts in
    the report are always complete). Raises :class:`NoValidRowsError` when no row is valid.
    """
    parser = FileParser(path, kind, fields, chunk_bytes)
    kept: list[pa.Table] = []
    n_kept = 0
    for rows, quarantine in parser.chunks():
        if on_chunk is not None:
            on_chunk(rows, quarantine)
        if n_kept < max_quarantine_rows and quarantine.num_rows:
            part = quarantine.slice(0, max_quarantine_rows - n_kept)
            kept.append(part)
            n_kept += part.num_rows
    parser.report.raise_if_no_rows()
    table = pa.concat_tables(kept) if kept else QUARANTINE_SCHEMA.empty_table()
    return ParseResult(parser.report, table)
