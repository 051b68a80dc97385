"""The file parser: reads a raw file in bounded chunks and turns its lines into Arrow tables.

Each ~1 MB slice of a chunk goes through one of two tokenizers with the same output. The
compiled one (:mod:`.compiled`, the default) reads each line once in machine code. The
vectorised one runs numpy passes over the whole slice: :mod:`.scan` (structure), :mod:`.numbers`
(ids and values), :mod:`.fields` (field slots); it takes the slices the compiled one hands back
(valid lines outside its strict grammar). Rejected lines get their reason from :mod:`.reference`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from rec_pipeline.data.aliccp import compiled
from rec_pipeline.data.aliccp.fields import FieldTable
from rec_pipeline.data.aliccp.format import HEADER_COMMAS, SKELETON_KIND
from rec_pipeline.data.aliccp.numbers import decimal_tokens, uint_tokens
from rec_pipeline.data.aliccp.reference import (
    PythonTokens,
    float32_or_none,
    int_or_none,
    line_reason,
)
from rec_pipeline.data.aliccp.report import ParseReport, ParseResult
from rec_pipeline.data.aliccp.scan import (
    C_BAD,
    C_NL,
    C_X03,
    after_last_newline,
    check_structure,
    gather_strings,
    scan,
    slices,
)
from rec_pipeline.data.aliccp.schema import (
    QUARANTINE_SCHEMA,
    check_fields,
    check_kind,
    rows_schema,
)

DEFAULT_CHUNK_BYTES = 16 << 20
TOKENIZERS = ("compiled", "numpy")
# The tokenizer of a FileParser not told which (the tests run under each).
DEFAULT_TOKENIZER = "compiled"
QUARANTINE_LINE_CHARS = 2000
# Bytes kept in front of the chunk data, so an 8- or 16-byte window ending at any token end can
# be read without bounds checks (the bytes before a token are masked out anyway).
_PAD = 64
# A chunk is parsed in slices of about this many bytes (cut at line ends): the temporaries of
# one slice stay in the CPU caches, which is worth ~1.5x over one pass on a 16 MB chunk.
_SLICE_BYTES = 1 << 20


@dataclass
class _Lines:
    """Where the lines of one slice are; positions are offsets into the slice."""

    line_start: np.ndarray  # [n_lines] first byte of each line
    nl_pos: np.ndarray  # [n_lines] its '\n'
    line_idx: np.ndarray  # [m] slice line index of each structurally valid line
    sp: np.ndarray  # separator positions of the valid lines
    cls: np.ndarray  # their classes
    term: np.ndarray  # [m] separator index of each valid line's '\n'


@dataclass
class _Tokens:
    """Token bounds of the structurally valid lines of a slice."""

    h_start: np.ndarray  # [m, nc] header tokens, [start, end)
    h_end: np.ndarray
    pf: np.ndarray  # [n_feat] field token b[pf:p2], id b[p2+1:p3], value b[p3+1:pv]
    p2: np.ndarray
    p3: np.ndarray
    pv: np.ndarray
    n_feat_line: np.ndarray  # [m] features per line
    feat_off: np.ndarray  # [m + 1] first feature of each line

    def kept(self, good: np.ndarray, feat_keep: np.ndarray) -> _Tokens:
        """The tokens of the lines where ``good`` ([m]) holds; feat_keep: [n_feat] the same."""
        n_feat_line = self.n_feat_line[good]
        feat_off = np.zeros(n_feat_line.size + 1, dtype=np.int64)
        np.cumsum(n_feat_line, out=feat_off[1:])
        pf, p2, p3, pv = (a[feat_keep] for a in (self.pf, self.p2, self.p3, self.pv))
        return _Tokens(self.h_start[good], self.h_end[good], pf, p2, p3, pv, n_feat_line, feat_off)


class FileParser:
    """Parses one raw file chunk by chunk; see the module docstring.

    ``chunks()`` yields ``(rows, quarantine)`` per chunk (a chunk is about ``chunk_bytes`` of
    text, cut at a line end; its tables have one record batch per ~1 MB slice, so call
    ``combine_chunks()`` if contiguous arrays are needed) and adds each chunk's counts to
    ``report`` (``last_chunk_report`` holds the latest chunk's alone); :func:`.parts.write_parts`
    does the same with each chunk's rows written to a Parquet file, in worker processes if
    asked. Iterate it once. ``tokenizer`` is ``compiled`` or ``numpy`` (see the module
    docstring; the output is the same), None for :data:`DEFAULT_TOKENIZER`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        kind: str,
        fields: Sequence[str],
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        tokenizer: str | None = None,
    ):
        check_kind(kind)
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be positive")
        tokenizer = DEFAULT_TOKENIZER if tokenizer is None else tokenizer
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
        self.tokenizer = tokenizer
        self.path = Path(path)
        self.kind = kind
        self.fields = check_fields(fields)
        self.chunk_bytes = int(chunk_bytes)
        self.schema = rows_schema(kind, self.fields)
        self.report = ParseReport(file=str(self.path), kind=kind)
        self.last_chunk_report: ParseReport | None = None
        self._n_commas = HEADER_COMMAS[kind]
        self._field_table = FieldTable(self.fields)
        self._separators = np.empty(0, np.int64)  # the compiled tokenizer's scratch
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
                cut = after_last_newline(buf[_PAD : _PAD + n])
                if cut == 0:
                    carry = n  # one line longer than what we have: read more
                    continue
                yield buf, cut, cut
                carry = n - cut
                buf[_PAD : _PAD + carry] = buf[_PAD + cut : _PAD + n].copy()

    def chunks(self) -> Iterator[tuple[pa.Table, pa.Table]]:
        """``(rows, quarantine)`` per chunk, in file order, parsed in this process."""
        self._start()
        for buf, n, n_file in self._regions():
            yield self._collect(self._parse_region(buf, n, n_file, self._next_line))

    def _start(self) -> None:
        if self._started:
            raise RuntimeError("a FileParser can be iterated only once")
        self._started = True

    def _parse_region(
        self, buf: np.ndarray, n: int, n_file: int, first_line: int
    ) -> tuple[pa.Table, pa.Table, ParseReport]:
        """The rows, quarantine and counts of the whole lines in buf[_PAD : _PAD + n], whose
        first line is the file's line ``first_line``."""
        self._next_line = first_line
        report = ParseReport(file=str(self.path), kind=self.kind, bytes_read=n_file)
        rows, quarantine = [], []
        for lo, hi in slices(buf[_PAD : _PAD + n], _SLICE_BYTES):
            r, q = self._parse_slice(buf, _PAD + lo, hi - lo, report)
            rows.append(r)
            quarantine.append(q)
        return _concat(rows), _concat(quarantine), report

    def _collect(self, parsed: tuple[pa.Table, pa.Table, ParseReport]) -> tuple:
        rows, quarantine, report = parsed
        self.report.add(report)
        self.last_chunk_report = report
        return rows, quarantine

    def _parse_range(self, start: int, end: int) -> tuple[pa.Table, pa.Table, ParseReport]:
        """Parse the file's bytes [start, end) (whole lines), numbering its lines from 1."""
        n_file = end - start
        buf = np.zeros(_PAD + n_file + 1, dtype=np.uint8)
        with open(self.path, "rb") as fh:
            fh.seek(start)
            fh.readinto(memoryview(buf)[_PAD : _PAD + n_file])
        n = n_file
        if n and buf[_PAD + n - 1] != ord("\n"):  # an unterminated last line
            buf[_PAD + n] = ord("\n")
            n += 1
        return self._parse_region(buf, n, n_file, 1)

    # -- one slice --------------------------------------------------------------------------

    def _parse_slice(
        self, buf: np.ndarray, base: int, n: int, report: ParseReport
    ) -> tuple[pa.Table, pa.Table]:
        """Parse the whole lines in buf[base : base + n] (base >= _PAD) into ``report``."""
        b = buf[base : base + n]
        if self.tokenizer == "compiled":
            parsed = self._parse_compiled(b, _words(buf), base - 8, report)
            if parsed is not None:
                return parsed
        sp, cls = scan(b)
        term, bad_struct = check_structure(sp, cls, self._n_commas)
        if bad_struct.any():  # "\r\n" line ends? Drop those '\r' (in a copy of the slice).
            bad = sp[cls == C_BAD]
            crlf = bad[(b[bad] == ord("\r")) & (b[bad + 1] == ord("\n"))]
            if crlf.size:
                keep = np.ones(n, dtype=bool)
                keep[crlf] = False
                n -= crlf.size
                buf, base = np.zeros(_PAD + n + 1, dtype=np.uint8), _PAD
                buf[_PAD : _PAD + n] = b[keep]
                b = buf[_PAD : _PAD + n]
                sp, cls = scan(b)
                term, bad_struct = check_structure(sp, cls, self._n_commas)
        # The window whose last byte is slice byte p - 1 is u64[p + base - 8].
        return self._parse_lines(b, _words(buf), base - 8, sp, cls, term, bad_struct, report)

    def _parse_compiled(self, b, u64, off, report: ParseReport) -> tuple | None:
        """:meth:`_parse_slice` by the compiled tokenizer; None when it hands the slice back."""
        ft = self._field_table
        if self._separators.size < b.size:
            self._separators = np.empty(b.size, np.int64)
        (header, cfi_offsets, cfi_data, slots, keys, ids, values, flagged, n_lines, crlf) = (
            compiled.tokenize(
                b,
                u64,
                off,
                self._separators,
                self._n_commas,
                self.kind == SKELETON_KIND,
                ft.keys,
                ft.slots,
                ft.table,
                ft.mult,
                ft.shift,
            )
        )
        if crlf:
            return None
        text = b.tobytes() if flagged.size else b""
        raws, reasons = [], []
        for start in flagged[:, 1].tolist():
            raw = text[start : text.index(b"\n", start)]
            reason = line_reason(raw, self.kind)
            if reason is None:  # valid, outside the compiled grammar
                return None
            raws.append(raw)
            reasons.append(reason)
        missing = np.flatnonzero(slots < 0)
        if missing.size:
            slots[missing] = ft.resolve(keys[missing])
        n_feat_row = header[3]
        offsets, field_start, ids, values = compiled.group_by_field(
            slots, ids, values, n_feat_row, len(self.fields)
        )
        n_known = int(field_start[-1])
        if n_known < slots.size:
            self._count_unknown(slots[slots >= len(self.fields)], report)

        n_rows = n_feat_row.size
        columns = []
        if self.kind == SKELETON_KIND:
            columns += [pa.array(header[0]), pa.array(header[1].astype(np.int8))]
            columns.append(pa.array(header[2].astype(np.int8)))
        cfi = pa.StringArray.from_buffers(n_rows, pa.py_buffer(cfi_offsets), pa.py_buffer(cfi_data))
        columns.append(cfi)
        _append_list_columns(columns, offsets, field_start, ids, values)
        rows = pa.Table.from_arrays(columns, schema=self.schema)

        first_line_no = self._next_line
        self._next_line += n_lines
        report.lines += n_lines
        report.valid_rows += n_rows
        report.features_kept += n_known
        for reason in reasons:
            report.counts[reason] = report.counts.get(reason, 0) + 1
        line_numbers = flagged[:, 0] + first_line_no
        return rows, _quarantine_table(str(self.path), line_numbers, reasons, raws)

    def _count_unknown(self, unknown_slots: np.ndarray, report: ParseReport) -> None:
        """Count features of fields not configured (slots >= the configured fields) by name."""
        nf = len(self.fields)
        for s, cnt in enumerate(np.bincount(unknown_slots - nf).tolist()):
            if cnt:
                name = self._field_table.names[nf + s]
                report.unknown_fields[name] = report.unknown_fields.get(name, 0) + cnt

    def _parse_lines(
        self, b, u64, off, sp, cls, term, bad_struct, report
    ) -> tuple[pa.Table, pa.Table]:
        """Rows of the valid lines and the quarantine of the others; counts go to ``report``."""
        lines = _valid_lines(sp, cls, term, bad_struct)
        n_lines = lines.nl_pos.size
        first_line_no = self._next_line
        self._next_line += n_lines
        report.lines += n_lines
        tok = _locate_tokens(lines, self._n_commas)
        py_int = PythonTokens(b, int_or_none)
        header, bad_tok = self._parse_header(b, u64, off, tok, py_int)
        ids, values, bad_feat = _parse_features(b, u64, off, tok, py_int)
        bad_tok |= bad_feat

        good = ~bad_tok  # [m]
        c0c1 = np.zeros(good.size, dtype=bool)
        if self.kind == SKELETON_KIND:
            c0c1 = good & (header["click"] == 0) & (header["conversion"] == 1)
            good &= ~c0c1
        if not good.all():
            feat_keep = np.repeat(good, tok.n_feat_line)
            tok = tok.kept(good, feat_keep)
            ids, values = ids[feat_keep], values[feat_keep]
            header = {k: v[good] for k, v in header.items()}

        columns = [pa.array(v) for v in header.values()]
        cfi_k = self._n_commas - 2
        columns.append(gather_strings(b, tok.h_start[:, cfi_k], tok.h_end[:, cfi_k]))
        n_known = self._field_columns(columns, u64, off, b, tok, ids, values, report)
        rows = pa.Table.from_arrays(columns, schema=self.schema)
        report.valid_rows += tok.n_feat_line.size
        report.features_kept += n_known

        rejected = np.flatnonzero(bad_struct)
        if bad_tok.any() or c0c1.any():
            rejected = np.sort(np.concatenate([rejected, lines.line_idx[bad_tok | c0c1]]))
        is_c0c1 = np.zeros(n_lines, dtype=bool)
        is_c0c1[lines.line_idx[c0c1]] = True
        quarantine = self._quarantine(b, lines, rejected, is_c0c1, first_line_no, report)
        return rows, quarantine

    def _parse_header(
        self, b, u64, off, tok: _Tokens, py_int: PythonTokens
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Header columns before common_feature_index, and the [m] header failure mask."""
        h_start, h_end = tok.h_start, tok.h_end
        bad = np.zeros(h_start.shape[0], dtype=bool)
        header: dict[str, np.ndarray] = {}
        if self.kind == SKELETON_KIND:
            sample_id, ok = uint_tokens(u64, off, h_start[:, 0], h_end[:, 0])
            bad |= py_int.fix(sample_id, ok, h_start[:, 0], h_end[:, 0])
            header["sample_id"] = sample_id
            for k, name in ((1, "click"), (2, "conversion")):  # exactly one byte, '0' or '1'
                v = np.take(b, h_start[:, k]) - np.uint8(ord("0"))
                bad |= (h_end[:, k] - h_start[:, k] != 1) | (v > 1)
                header[name] = v.view(np.int8)
        cfi_k, num_k = self._n_commas - 2, self._n_commas - 1
        bad |= h_end[:, cfi_k] == h_start[:, cfi_k]
        feature_num, ok = uint_tokens(u64, off, h_start[:, num_k], h_end[:, num_k])
        bad |= py_int.fix(feature_num, ok, h_start[:, num_k], h_end[:, num_k])
        bad |= feature_num != tok.n_feat_line
        return header, bad

    def _field_columns(self, columns, u64, off, b, tok: _Tokens, ids, values, report) -> int:
        """Append the id / weight list columns of every configured field; returns features kept.

        Features of unknown fields are counted into ``report.unknown_fields`` and dropped.
        """
        nf = len(self.fields)
        n_rows = tok.n_feat_line.size
        slot = self._field_table.slots_for(u64, off, b, tok.pf, tok.p2)  # [n_kept_feat]
        known = slot < nf
        n_known = int(np.count_nonzero(known))
        if n_known < slot.size:
            self._count_unknown(slot[~known], report)
        # Sort key: field slot, unknown fields last; 8 or 16 bits so numpy uses a radix sort.
        key = np.minimum(slot, nf).astype(np.uint8 if nf < 255 else np.uint16)
        order = np.argsort(key, kind="stable")[:n_known]  # by field, file order within
        ids_sorted, values_sorted = np.take(ids, order), np.take(values, order)
        # counts[f, r]: features of field f in row r, [nf, n_rows].
        row_of = np.repeat(np.arange(n_rows, dtype=np.int64), tok.n_feat_line)
        counts = np.bincount(
            (key.astype(np.int64) * n_rows + row_of)[known], minlength=nf * n_rows
        ).reshape(nf, n_rows)
        offsets = np.zeros((nf, n_rows + 1), dtype=np.int32)  # list offsets per field
        np.cumsum(counts, axis=1, out=offsets[:, 1:])
        field_start = np.zeros(nf + 1, dtype=np.int64)  # slice of ids_sorted per field
        np.cumsum(offsets[:, -1], out=field_start[1:])
        _append_list_columns(columns, offsets, field_start, ids_sorted, values_sorted)
        return n_known

    def _quarantine(
        self, b, lines: _Lines, rejected, is_c0c1, first_line_no: int, report: ParseReport
    ) -> pa.Table:
        """The rejected lines in file order, each counted under its reason in ``report``.

        Python runs only here, once per rejected line, to name the reason.
        """
        q_reasons: list[str] = []
        raws: list[bytes] = []
        for i in rejected.tolist():
            raw = b[lines.line_start[i] : lines.nl_pos[i]].tobytes()
            if is_c0c1[i]:
                reason = "click0_conversion1"
            else:
                reason = line_reason(raw, self.kind) or "malformed"
            report.counts[reason] = report.counts.get(reason, 0) + 1
            q_reasons.append(reason)
            raws.append(raw)
        return _quarantine_table(str(self.path), rejected + first_line_no, q_reasons, raws)


def _quarantine_table(file: str, line_numbers, reasons: list[str], raws: list[bytes]) -> pa.Table:
    """The quarantine rows of rejected lines (their text cut to QUARANTINE_LINE_CHARS)."""
    # (a character takes at most 4 bytes, so the cut cannot change the kept text)
    texts = [
        raw[: 4 * QUARANTINE_LINE_CHARS].decode("utf-8", errors="replace")[:QUARANTINE_LINE_CHARS]
        for raw in raws
    ]
    return pa.Table.from_arrays(
        [
            pa.array([file] * len(raws), pa.string()),
            pa.array(line_numbers, pa.int64()),
            pa.array(reasons, pa.string()),
            pa.array(texts, pa.string()),
        ],
        schema=QUARANTINE_SCHEMA,
    )


def _append_list_columns(columns: list, offsets, field_start, ids, values) -> None:
    """Append each field's id and weight list columns; field f's lists are
    ids[field_start[f] + offsets[f, r] : field_start[f] + offsets[f, r + 1]] for row r."""
    for f in range(offsets.shape[0]):
        lo, hi = field_start[f], field_start[f + 1]
        off_f = pa.array(offsets[f])
        columns.append(pa.ListArray.from_arrays(off_f, pa.array(ids[lo:hi])))
        columns.append(pa.ListArray.from_arrays(off_f, pa.array(values[lo:hi])))


def _valid_lines(sp, cls, term, bad_struct) -> _Lines:
    """Line bounds of a slice, and the separators of its structurally valid lines only.

    Every line ends with a '\n' separator, so the token before separator i is
    b[sp[i-1]+1 : sp[i]] (for a line's first separator: from the line start).
    """
    n_lines = term.size
    nl_pos = np.take(sp, term)
    line_start = np.empty(n_lines, dtype=np.int64)
    line_start[0] = 0
    line_start[1:] = nl_pos[:-1] + 1
    line_idx = np.arange(n_lines)
    if bad_struct.any():
        line_idx = np.flatnonzero(~bad_struct)
        keep = np.repeat(~bad_struct, np.diff(term, prepend=-1))
        sp, cls = sp[keep], cls[keep]
        term = np.flatnonzero(cls == C_NL)
    return _Lines(line_start, nl_pos, line_idx, sp, cls, term)


def _locate_tokens(lines: _Lines, nc: int) -> _Tokens:
    """Bounds of every header token and feature of the valid lines, from their separators."""
    sp, cls, term = lines.sp, lines.cls, lines.term
    m = lines.line_idx.size
    # Header tokens: the nc comma-terminated tokens of each line, [m, nc]. The commas are a
    # line's first nc separators.
    first = np.empty(m, dtype=np.int64)
    first[:1] = 0
    first[1:] = term[:-1] + 1
    h_end = np.take(sp, first[:, None] + np.arange(nc))
    h_start = np.empty_like(h_end)
    h_start[:, 1:] = h_end[:, :-1] + 1
    h_start[:, 0] = lines.line_start[lines.line_idx]
    # Features: one per '\x03'; the separator before a field is a comma or '\x01' of its line.
    i3 = np.flatnonzero(cls == C_X03)
    p3 = np.take(sp, i3)
    p2 = np.take(sp, i3 - 1)
    pf = np.take(sp, i3 - 2)
    pf += 1
    pv = np.take(sp, i3 + 1)
    # Features per line: nc commas, then 3F - 1 list separators (F > 0), then '\n'.
    n_list_seps = np.diff(term, prepend=-1) - 1 - nc
    n_feat_line = np.where(n_list_seps > 0, (n_list_seps + 1) // 3, 0)
    feat_off = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(n_feat_line, out=feat_off[1:])
    return _Tokens(h_start, h_end, pf, p2, p3, pv, n_feat_line, feat_off)


def _parse_features(b, u64, off, tok: _Tokens, py_int: PythonTokens):
    """ids [n_feat] int64, values [n_feat] float32 and the [m] per-line failure mask."""
    bad_feat = tok.pf == tok.p2  # empty field token
    ids, ok = uint_tokens(u64, off, tok.p2 + 1, tok.p3)
    bad_feat |= py_int.fix(ids, ok, tok.p2 + 1, tok.p3)
    values, ok = decimal_tokens(u64, off, b, tok.p3 + 1, tok.pv)
    values = values.astype(np.float32)
    bad_feat |= PythonTokens(b, float32_or_none).fix(values, ok, tok.p3 + 1, tok.pv)
    bad_line = np.zeros(tok.n_feat_line.size, dtype=bool)
    if bad_feat.any():
        bad_line[np.searchsorted(tok.feat_off, np.flatnonzero(bad_feat), side="right") - 1] = True
    return ids, values, bad_line


def _words(buf: np.ndarray) -> np.ndarray:
    """Unaligned uint64 view of buf: [len(buf) - 7], word i = bytes buf[i : i + 8] little-endian."""
    return np.ndarray((buf.size - 7,), dtype="<u8", buffer=buf, strides=(1,))


def _concat(tables: list[pa.Table]) -> pa.Table:
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


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
