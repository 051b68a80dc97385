"""Parsing of a raw folder's four files, chunk by chunk, with the running data-quality counts."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from rec_pipeline.data.aliccp import (
    COMMON_KIND,
    QUARANTINE_SCHEMA,
    SKELETON_KIND,
    FileParser,
    rows_schema,
)
from rec_pipeline.data.raw import RawFiles
from rec_pipeline.data.workers import worker_count

log = logging.getLogger(__name__)

# Outputs of one parsing pass, in the order :func:`parse_raw_files` yields them.
PARSE_OUTPUTS = ("train_samples", "train_commons", "test_samples", "test_commons")


def parse_raw_files(
    raw: RawFiles,
    skeleton: Sequence[str],
    common: Sequence[str],
    chunk_bytes: int,
    workers: int | str = 1,
) -> Iterator[tuple]:
    """Parse the four raw files chunk by chunk.

    Yields (train_samples, train_commons, test_samples, test_commons, quarantine, report) with
    an empty table for the outputs a chunk does not feed; the report is the running data-quality
    count, overwritten at each chunk so that a crash still leaves the counts so far. ``workers``
    (a count or ``auto``) parses each large file's chunks in that many processes.
    """
    reports: dict[str, dict] = {}
    jobs = [
        ("train_commons", raw.common("train"), COMMON_KIND, common),
        ("train_samples", raw.skeleton("train"), SKELETON_KIND, skeleton),
        ("test_commons", raw.common("test"), COMMON_KIND, common),
        ("test_samples", raw.skeleton("test"), SKELETON_KIND, skeleton),
    ]
    empties = {name: rows_schema(kind, flds).empty_table() for name, _, kind, flds in jobs}
    for name, path, kind, flds in jobs:
        parser = FileParser(path, kind, flds, chunk_bytes=chunk_bytes)
        n_workers = worker_count(workers, path.stat().st_size // chunk_bytes)
        for rows, quarantine in parser.chunks(workers=n_workers):
            reports[name] = parser.report.to_dict()
            outs = [rows if o == name else empties[o] for o in PARSE_OUTPUTS]
            yield (*outs, quarantine, {"files": dict(reports)})
        reports[name] = parser.report.to_dict()
        log.info(
            "Parsed %s: %d valid rows, %d rejected %s, unknown fields %s",
            path,
            parser.report.valid_rows,
            parser.report.rejected,
            parser.report.counts,
            parser.report.unknown_fields,
        )
        parser.report.raise_if_no_rows()
    yield (
        *[empties[o] for o in PARSE_OUTPUTS],
        QUARANTINE_SCHEMA.empty_table(),
        {"files": reports},
    )
