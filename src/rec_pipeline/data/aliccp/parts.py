"""Parsing raw files into Parquet part files, in worker processes: the rows of a chunk are
written by the process that parsed them and never travel back.

Only byte ranges go to the workers (each reads its own range of the file) and only the part
file's name and row count, the chunk's counts and its quarantined lines come back. One pool
parses the chunks of every file given, so it stays busy across file ends.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from rec_pipeline.data.aliccp.parser import FileParser
from rec_pipeline.data.aliccp.report import ParseReport
from rec_pipeline.data.aliccp.schema import QUARANTINE_SCHEMA
from rec_pipeline.data.shards import COMPRESSION, PartFile, write_part
from rec_pipeline.data.workers import ordered_map, worker_state


def write_parts(
    parsers: Sequence[FileParser],
    staging: Path,
    workers: int = 1,
    compression: str = COMPRESSION,
) -> Iterator[tuple[int, PartFile, pa.Table]]:
    """``(parser index, rows part file, quarantine)`` per chunk of each parser's file, file by
    file in the order given and chunk by chunk in file order.

    Each chunk's rows are written to a Parquet file in ``staging`` by the process that parsed
    them: with ``workers`` > 1, by that many processes. A worker numbers a chunk's lines from 1;
    the quarantined lines are renumbered here with the lines of the file's chunks before. Each
    parser's ``report`` and ``last_chunk_report`` are kept up to date as with
    :meth:`FileParser.chunks`, whose chunks these are whatever the number of workers (so the
    files hold the same rows in the same shards).
    """
    for parser in parsers:
        parser._start()
    tasks = [
        (j, start, end, i)
        for j, p in enumerate(parsers)
        for i, (start, end) in enumerate(_line_ranges(p.path, p.chunk_bytes))
    ]
    if workers > 1:
        specs = [(p.path, p.kind, p.fields, p.chunk_bytes, p.tokenizer) for p in parsers]
        init = (specs, staging, compression)
        done = ordered_map(_write_range_in_worker, tasks, workers, _init_worker, init)
    else:
        done = (_write_range(parsers[j], staging, compression, *t) for j, *t in tasks)
    lines_before = [0] * len(parsers)
    col = QUARANTINE_SCHEMA.get_field_index("line_number")
    for (j, *_), (part, quarantine, report) in zip(tasks, done, strict=True):
        numbers = pc.add(quarantine.column(col), lines_before[j])
        quarantine = quarantine.set_column(col, QUARANTINE_SCHEMA.field(col), numbers)
        lines_before[j] += report.lines
        parsers[j].report.add(report)
        parsers[j].last_chunk_report = report
        yield j, part, quarantine


def _write_range(
    parser: FileParser, staging: Path, compression: str, start: int, end: int, index: int
) -> tuple[PartFile, pa.Table, ParseReport]:
    """Parse the file's bytes [start, end) and write the rows as chunk ``index``'s part file."""
    rows, quarantine, report = parser._parse_range(start, end)
    part = write_part(rows, Path(staging) / f"{parser.path.stem}-{index:06d}.parquet", compression)
    return part, quarantine, report


def _init_worker(specs, staging, compression) -> tuple[list[FileParser], Path, str]:
    """A worker process's parsers (one per file), staging folder and codec."""
    return [FileParser(*spec) for spec in specs], staging, compression


def _write_range_in_worker(j: int, start: int, end: int, index: int):
    parsers, staging, compression = worker_state()
    return _write_range(parsers[j], staging, compression, start, end, index)


def _line_ranges(path: Path, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """The ``[start, end)`` byte ranges that :meth:`FileParser._regions` reads as regions.

    The reader fills its buffer up to the next multiple of ``chunk_bytes`` of the file and cuts
    just after the buffer's last '\\n' (reading on when there is none); the read that meets the
    end of the file takes the rest. The same cuts make the same chunks, and so the same shards
    and per-chunk sampling draws, whatever the number of workers.
    """
    size = path.stat().st_size
    start, end = 0, chunk_bytes
    with open(path, "rb") as fh:
        while start < size:
            if end > size:
                yield start, size
                return
            last = _last_newline(fh, start, end)
            if last >= 0:
                yield start, last + 1
                start = last + 1
            end += chunk_bytes


def _last_newline(fh, start: int, end: int, block: int = 1 << 16) -> int:
    """File offset of the last '\\n' in [start, end), -1 when there is none."""
    hi = end
    while hi > start:
        lo = max(start, hi - block)
        fh.seek(lo)
        hit = fh.read(hi - lo).rfind(b"\n")
        if hit >= 0:
            return lo + hit
        hi = lo
    return -1
