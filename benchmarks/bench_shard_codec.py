"""Parquet codecs on real shards: file size, write and read time of the same tables.

Rewrites every shard of the given shard folders (parsed or encoded, e.g. those of an
``encode_folder`` run) with each codec, in memory, and prints MB written, seconds to write and
to read back, per folder and codec. One process, one core.

    python -m benchmarks.bench_shard_codec FOLDER [FOLDER ...] --codecs zstd snappy lz4 none
"""

from __future__ import annotations

import argparse
import time

import pyarrow as pa
import pyarrow.parquet as pq

from rec_pipeline.data.shards import ShardSet


def measure(folder: str, codec: str, level: int | None) -> tuple[float, float, float, float]:
    """(MB in memory, MB written, write s, read s) of the folder's shards under ``codec``."""
    raw = written = t_write = t_read = 0.0
    for table in ShardSet(folder).iter_tables():
        raw += table.nbytes
        sink = pa.BufferOutputStream()
        t0 = time.perf_counter()
        pq.write_table(table, sink, compression=codec, compression_level=level)
        buf = sink.getvalue()
        t1 = time.perf_counter()
        pq.read_table(pa.BufferReader(buf))
        t_read += time.perf_counter() - t1
        t_write += t1 - t0
        written += buf.size
    return raw / 1e6, written / 1e6, t_write, t_read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--codecs", nargs="+", default=["zstd", "zstd:3", "snappy", "lz4", "none"])
    args = ap.parse_args()
    print("| shard folder | codec | MB in memory | MB written | ratio | write s | read s |")
    print("|---|---|---|---|---|---|---|")
    for folder in args.folders:
        for spec in args.codecs:
            codec, _, level = spec.partition(":")
            mem, mb, w, r = measure(folder, codec, int(level) if level else None)
            print(
                f"| {folder.rstrip('/').rsplit('/', 1)[-1]} | {spec} | {mem:,.0f} | {mb:,.1f} | "
                f"{mem / mb:.1f} | {w:.2f} | {r:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
