"""The compiled tokenizer: a slice's lines read token by token, in machine code (numba).

It accepts only lines of a strict grammar that it parses exactly as the vectorised parser does:

    skeleton:  digits{1,18} , [01] , [01] , cfi , digits{1,18} , features
    common:    cfi , digits{1,18} , features
    features:  empty, or  feature ( \\x01 feature )*
    feature:   field \\x02 digits{1,18} \\x03 value
    value:     -? digits [ . digits ]   (1 to 16 bytes, at least 1 and at most 15 digits)

where cfi and field are non-empty runs of printable ASCII without commas, a field token is at
most 8 bytes, the declared feature count equals the number of features, and a skeleton line is
not click 0 / conversion 1. Every other line is *flagged*, not judged: the caller asks the
reference rules (:func:`.reference.line_reason`) why. Flagged lines that are invalid are
quarantined under that reason; a flagged line that is valid (an exponent, a ``+`` sign, a long
field name, a ``\\r\\n`` line end) sends the whole slice to the vectorised parser instead. So the
rows, the quarantine and the counts are those of the vectorised parser, byte for byte; the tests
run every parser test with both tokenizers.

The functions compile on first use (~3 s) and are cached on disk (numba's cache: next to this
file when it is writable, else under ``NUMBA_CACHE_DIR`` or the user's cache folder).

A value is mantissa / 10**fraction_digits in float64 (both exact, so correctly rounded: the
double of ``float(text)``), then rounded to float32, the same two steps as the vectorised parser.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_NL, _COMMA, _X01, _X02, _X03 = 10, 44, 1, 2, 3
_CR, _MINUS, _DOT, _ZERO = 13, 45, 46, 48
_MAX_INT_DIGITS = 18  # 10**18 - 1 < 2**63: any 18 digits fit an int64
_MAX_VALUE_BYTES = 16
_MAX_VALUE_DIGITS = 15  # mantissa < 10**15 < 2**53: exact in float64
_POW10 = 10.0 ** np.arange(_MAX_VALUE_DIGITS + 1)  # a constant of the compiled code


@njit(cache=True, nogil=True)
def _uint(b, u64, off, p, q):
    """The token b[p:q] as 1 to 18 digits: (int64 value, ok).

    Up to 16 digits are read as one or two 8-byte words (``u64[i + off]`` holds b[i - 8 : i]
    little-endian) with SWAR arithmetic, so no multiply chain runs per digit; 17 or 18 digits
    go byte by byte.
    """
    n = q - p
    if n < 1 or n > _MAX_INT_DIGITS:
        return np.int64(0), False
    if n > 16:
        v = np.int64(0)
        for i in range(p, q):
            d = np.int64(b[i]) - _ZERO
            if d < 0 or d > 9:
                return v, False
            v = v * 10 + d
        return v, True
    lo = _digit_word(u64[q + off], min(n, 8))
    ok = _digits_ok(lo)
    v = _value8(lo)
    if n > 8:
        hi = _digit_word(u64[q - 8 + off], n - 8)
        ok = ok and _digits_ok(hi)
        v += _value8(hi) * np.uint64(100_000_000)
    return np.int64(v), ok


@njit(cache=True, nogil=True)
def _digit_word(w, n):
    """The top n bytes of the 8-byte word w (the token's last n bytes) as digit values, the
    bytes below cleared (see :mod:`.numbers`)."""
    w ^= np.uint64(0x3030303030303030)
    drop = np.uint64(64 - 8 * n)
    return (w >> drop) << drop if n < 8 else w


@njit(cache=True, nogil=True)
def _digits_ok(t):
    """Every byte of the digit word is 0-9."""
    return ((t | (t + np.uint64(0x0606060606060606))) & np.uint64(0xF0F0F0F0F0F0F0F0)) == 0


@njit(cache=True, nogil=True)
def _value8(t):
    """Value of the 8 digits of a digit word (pairs, then quads, then all 8)."""
    v = (t * np.uint64(2561)) >> np.uint64(8)
    v = ((v & np.uint64(0x00FF00FF00FF00FF)) * np.uint64(6553601)) >> np.uint64(16)
    return ((v & np.uint64(0x0000FFFF0000FFFF)) * np.uint64(42949672960001)) >> np.uint64(32)


@njit(cache=True, nogil=True)
def _decimal(b, p, q):
    """The value token b[p:q] byte by byte: (float32, ok)."""
    if q - p > _MAX_VALUE_BYTES:
        return np.float32(0.0), False
    neg = p < q and b[p] == _MINUS
    mantissa = np.int64(0)
    digits = 0
    frac = -1  # digits after the dot; -1: no dot yet
    for i in range(p + neg, q):
        c = b[i]
        if c == _DOT and frac < 0:
            frac = 0
        elif _ZERO <= c <= _ZERO + 9:
            mantissa = mantissa * 10 + (np.int64(c) - _ZERO)
            digits += 1
            if frac >= 0:
                frac += 1
        else:
            return np.float32(0.0), False
    if digits == 0 or digits > _MAX_VALUE_DIGITS:
        return np.float32(0.0), False
    v = np.float64(mantissa) / _POW10[max(frac, 0)]
    return np.float32(-v if neg else v), True


@njit(cache=True, nogil=True)
def _decimal8(b, u64, off, p, q):
    """The value token b[p:q] of 1 to 8 bytes by SWAR (see :mod:`.numbers`): (float32, ok)."""
    n = q - p
    t = _digit_word(u64[q + off], n)
    neg = b[p] == _MINUS
    if neg:  # the sign is the token's first byte: make it a 0 digit
        t ^= np.uint64(_MINUS ^ _ZERO) << np.uint64(64 - 8 * n)
    marks = t & np.uint64(0x1010101010101010)  # bit 4: set in '.' ^ '0', clear in digits
    low = (marks & (np.uint64(0) - marks)) >> np.uint64(4)  # 2**(8k) for the lowest mark
    has = min(low, np.uint64(1))
    below = low - has
    above = ~((low << np.uint64(8)) - has)
    ok = (t & (low * np.uint64(0xFF))) == low * np.uint64(_DOT ^ _ZERO)
    t = (t & above) | ((t & below) << np.uint64(8))
    frac = (np.uint64(7) - ((low * np.uint64(0x0001020304050607)) >> np.uint64(56))) * has
    ok = ok and _digits_ok(t) and n > np.int64(has) + neg
    v = np.float64(_value8(t)) / _POW10[frac]
    return np.float32(-v if neg else v), ok


@njit(cache=True, nogil=True)
def tokenize(b, u64, off, sp, n_commas, skeleton, f_keys, f_slots, f_table, f_mult, f_shift):
    """Tokenize the whole lines of ``b`` (uint8 [n], ending in '\\n'); ``u64[i + off]`` is the
    8-byte word of b[i - 8 : i] (the caller's buffer has room in front of b); ``sp`` is scratch
    room for n int64.

    First one branch-free pass lists every byte that is not printable ASCII other than a comma
    (the separators, and any invalid byte); the lines are then read separator to separator, so
    the work is per token, not per byte, and numbers are read 8 bytes at a time.

    Returns, for the accepted lines (rows, in file order):
      header [4, n_rows] int64: sample_id, click, conversion, features per row;
      cfi_offsets [n_rows + 1] int32 into cfi_data (the common_feature_index bytes);
    per feature of those rows, in file order: slot [n_feat] int32 (-1: a field token the table
    does not hold, whose key is in ``keys``), keys [n_feat] uint64, ids int64, values float32;
    and the flagged lines: [n_flagged, 2] int64 line index and start (their end is the next
    '\\n'), the number of lines, and whether a line ends in '\\r\\n'.
    """
    n = b.size
    n_sep = 0
    for i in range(n):
        sp[n_sep] = i
        c = b[i]
        n_sep += (c < 0x20) | (c > 0x7E) | (c == _COMMA)
    cap_rows = 0
    for k in range(n_sep):
        cap_rows += b[sp[k]] == _NL
    cap_feat = n // 6 + 1  # a feature takes at least 6 bytes ("f\x02i\x03v" and a separator)
    header = np.empty((4, cap_rows), np.int64)
    cfi_offsets = np.zeros(cap_rows + 1, np.int32)
    cfi_data = np.empty(n, np.uint8)
    slots = np.empty(cap_feat, np.int32)
    keys = np.empty(cap_feat, np.uint64)
    ids = np.empty(cap_feat, np.int64)
    values = np.empty(cap_feat, np.float32)
    flagged = np.empty((cap_rows, 2), np.int64)
    n_rows = n_feat = n_flagged = n_lines = n_cfi = 0
    crlf = False
    j = 0  # the next separator
    ls = 0  # the line's first byte
    while ls < n:
        ok = True
        p = ls  # the next token's first byte
        sid = click = conv = declared = np.int64(0)
        cfi_start = cfi_len = 0
        for h in range(n_commas):
            c = sp[j]
            if b[c] != _COMMA:
                ok = False
                break
            j += 1
            if skeleton and h == 0 or h == n_commas - 1:  # sample_id, feature count
                v, ok = _uint(b, u64, off, p, c)
                if h == 0 and skeleton:
                    sid = v
                else:
                    declared = v
            elif skeleton and h < 3:  # click, conversion: one byte, 0 or 1
                d = np.int64(b[p]) - _ZERO
                ok = c == p + 1 and 0 <= d <= 1
                if h == 1:
                    click = d
                else:
                    conv = d
            else:  # common_feature_index: not empty
                ok = c > p
                cfi_start = p
                cfi_len = c - p
            if not ok:
                break
            p = c + 1
        ok = ok and not (click == 0 and conv == 1)
        first_feat = n_feat
        if ok and not (b[sp[j]] == _NL and sp[j] == p):  # features (or junk: flagged)
            while True:
                s1 = sp[j]
                if b[s1] != _X02 or s1 == p or s1 - p > 8:
                    ok = False
                    break
                s2 = sp[j + 1]
                if b[s2] != _X03:
                    ok = False
                    break
                s3 = sp[j + 2]
                if b[s3] != _X01 and b[s3] != _NL:
                    ok = False
                    break
                drop = np.uint64(64 - 8 * (s1 - p))
                w = u64[s1 + off]
                key = (w >> drop) << drop if s1 - p < 8 else w
                at = f_table[(key * f_mult) >> f_shift]
                fid, ok = _uint(b, u64, off, s1 + 1, s2)
                value, good = np.float32(0.0), False
                if s2 + 1 < s3 <= s2 + 9:
                    value, good = _decimal8(b, u64, off, s2 + 1, s3)
                if not good:
                    value, good = _decimal(b, s2 + 1, s3)
                ok = ok and good
                if not ok:
                    break
                slots[n_feat] = f_slots[at] if f_keys[at] == key else -1
                keys[n_feat] = key
                ids[n_feat] = fid
                values[n_feat] = value
                n_feat += 1
                j += 2  # at s3
                if b[s3] == _NL:
                    break
                j += 1
                p = s3 + 1
        ok = ok and n_feat - first_feat == declared
        while b[sp[j]] != _NL:  # to the line's end (already there unless flagged)
            j += 1
        e = sp[j]
        j += 1
        if e > ls and b[e - 1] == _CR:
            crlf = True
        if ok:
            header[0, n_rows] = sid
            header[1, n_rows] = click
            header[2, n_rows] = conv
            header[3, n_rows] = n_feat - first_feat
            for k in range(cfi_len):
                cfi_data[n_cfi + k] = b[cfi_start + k]
            n_cfi += cfi_len
            n_rows += 1
            cfi_offsets[n_rows] = n_cfi
        else:
            n_feat = first_feat
            flagged[n_flagged, 0] = n_lines
            flagged[n_flagged, 1] = ls
            n_flagged += 1
        n_lines += 1
        ls = e + 1
    return (
        header[:, :n_rows],
        cfi_offsets[: n_rows + 1],
        cfi_data[:n_cfi],
        slots[:n_feat],
        keys[:n_feat],
        ids[:n_feat],
        values[:n_feat],
        flagged[:n_flagged],
        n_lines,
        crlf,
    )


@njit(cache=True, nogil=True)
def group_by_field(slots, ids, values, n_feat_row, nf):
    """The features of fields 0..nf-1 grouped by field, file order within each.

    Returns offsets [nf, n_rows + 1] int32 (row r's features of field f are
    ``field_start[f] + offsets[f, r] .. field_start[f] + offsets[f, r + 1]``), field_start
    [nf + 1] int64, and the grouped ids and values [n_known]; features of slots >= nf (fields
    not configured) are left out.
    """
    n_rows = n_feat_row.size
    offsets = np.zeros((nf, n_rows + 1), np.int32)
    k = 0
    for r in range(n_rows):
        for _ in range(n_feat_row[r]):
            s = slots[k]
            if s < nf:
                offsets[s, r + 1] += 1
            k += 1
    field_start = np.zeros(nf + 1, np.int64)
    for f in range(nf):
        for r in range(n_rows):
            offsets[f, r + 1] += offsets[f, r]
        field_start[f + 1] = field_start[f] + offsets[f, n_rows]
    n_known = field_start[nf]
    out_ids = np.empty(n_known, np.int64)
    out_values = np.empty(n_known, np.float32)
    cursor = field_start[:nf].copy()
    for k in range(slots.size):
        s = slots[k]
        if s < nf:
            out_ids[cursor[s]] = ids[k]
            out_values[cursor[s]] = values[k]
            cursor[s] += 1
    return offsets, field_start, out_ids, out_values
