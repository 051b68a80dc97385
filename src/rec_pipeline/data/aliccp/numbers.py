"""Vectorised number kernels: ASCII ints and decimals read eight bytes at a time (SWAR).

Numbers are parsed as "digit words": the 8 bytes ending at a token's last byte, read as one
little-endian uint64 (the token's first byte is the lowest of its bytes), XOR '0' in every
byte (so a digit byte holds its value), with the bytes before the token cleared to 0.
"""

from __future__ import annotations

import numpy as np

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


def uint_tokens(
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


def decimal_tokens(
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
    """:func:`decimal_tokens` for tokens of 9 to 16 bytes: two digit words.

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
