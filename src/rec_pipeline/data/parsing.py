"""Parsing of a raw folder's four files, chunk by chunk, with the running data-quality counts.

The rows of each chunk are written to a Parquet part file by the process that parsed them (in a
staging folder); what is yielded is that :class:`~rec_pipeline.data.shards.PartFile`, which the
shard writer (or the catalog's shard dataset) renames into its folder.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from rec_pipeline.data.aliccp import (
    COMMON_KIND,
    QUARANTINE_SCHEMA,
    SKELETON_KIND,
    FileParser,
    rows_schema,
    write_parts,
)
from rec_pipeline.data.raw import RawFiles
from rec_pipeline.data.shards import staging_folder
from rec_pipeline.data.workers import worker_count

log = logging.getLogger(__name__)

# Outputs of one parsing pass, in the order :func:`parse_raw_files` yields them.
PARSE_OUTPUTS = ("train_samples", "train_commons", "test_samples", "test_commons")


def parse_raw_files(
    raw: RawFiles,
    skeleton: Sequence[str],
    common: Sequence[str],
    chunk_bytes: int,
    staging: Path,
    workers: int | str = 1,
    tokenizer: str | None = None,
) -> Iterator[tuple]:
    """Parse the four raw files chunk by chunk.

    Yields (train_samples, train_commons, test_samples, test_commons, quarantine, report): the
    chunk's rows as a part file for the output it feeds, an empty table for the others; the
    report is the running data-quality count, overwritten at each chunk so that a crash still
    leaves the counts so far. ``workers`` (a count or ``auto``) parses the chunks in that many
    processes, one pool for the four files (in this process below four chunks in all). A
    file's counts are checked (no valid row: :class:`NoValidRowsError`) once its last chunk is
    out. ``tokenizer`` picks :class:`FileParser`'s (the output is the same). The part files are
    written in a fresh folder under ``staging`` (which must be on the shard folders'
    filesystem), removed when the generator ends: each yielded part must be moved away before
    the next item is asked for.
    """
    folder = staging_folder(staging, "parse-")
    try:
        yield from _parse(raw, skeleton, common, chunk_bytes, folder, workers, tokenizer)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _parse(raw, skeleton, common, chunk_bytes, staging, workers, tokenizer) -> Iterator[tuple]:
    jobs = [
        ("train_commons", raw.common("train"), COMMON_KIND, common),
        ("train_samples", raw.skeleton("train"), SKELETON_KIND, skeleton),
        ("test_commons", raw.common("test"), COMMON_KIND, common),
        ("test_samples", raw.skeleton("test"), SKELETON_KIND, skeleton),
    ]
    names = [name for name, *_ in jobs]
    empties = {name: rows_schema(kind, flds).empty_table() for name, _, kind, flds in jobs}
    parsers = [FileParser(path, kind, flds, chunk_bytes, tokenizer) for _, path, kind, flds in jobs]
    n_workers = worker_count(workers, sum(p.path.stat().st_size for p in parsers) // chunk_bytes)
    reports: dict[str, dict] = {}
    finished = 0  # files before this one are done: counted, logged and checked
    for j, part, quarantine in write_parts(parsers, staging, n_workers):
        for k in range(finished, j):
            _finish(parsers[k], names[k], reports)
        finished = j
        reports[names[j]] = parsers[j].report.to_dict()
        outs = [part if o == names[j] else empties[o] for o in PARSE_OUTPUTS]
        yield (*outs, quarantine, {"files": dict(reports)})
    for k in range(finished, len(jobs)):
        _finish(parsers[k], names[k], reports)
    yield (
        *[empties[o] for o in PARSE_OUTPUTS],
        QUARANTINE_SCHEMA.empty_table(),
        {"files": reports},
    )


def _finish(parser: FileParser, name: str, reports: dict[str, dict]) -> None:
    """A file's final counts, a log line, and the check that it held a valid row."""
    reports[name] = parser.report.to_dict()
    log.info(
        "Parsed %s: %d valid rows, %d rejected %s, unknown fields %s",
        parser.path,
        parser.report.valid_rows,
        parser.report.rejected,
        parser.report.counts,
        parser.report.unknown_fields,
    )
    parser.report.raise_if_no_rows()
