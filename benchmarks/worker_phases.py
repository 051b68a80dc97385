"""Where a data worker's time goes, and how each part scales with the number of processes.

Weak scaling: each of N spawned processes does the same work, ``--chunks`` chunks (half of
them common-feature chunks, half skeleton chunks of the training split, different ones in each
process), all at once; the table gives, per process on average, the wall and CPU seconds of
each part of that work. A part whose seconds grow with N is one that does not scale. The
start-up row is the pool's wall time less the slowest process's work: spawning the processes and
their imports.

Parse (``--raw FOLDER``): what one task of ``write_parts`` does per chunk, timed in parts:
the compiled tokenizer, grouping the features by field, building the Arrow list columns, the
rest of ``_parse_range`` (reading the bytes, the tables, the counts) and the Parquet write of the
rows (to ``/dev/shm``, so no disk is in the figure).

Encode (``--encoded FOLDER``, a folder written by ``encode_folder``, e.g. ``bench_preprocess
--raw R --run-one FOLDER``): what one task of ``encode_splits`` does per parsed shard: the
Parquet read, the vocabulary lookups, the train/valid split, the joins to the common records
and the Parquet writes.

    python -m benchmarks.worker_phases --raw data/01_raw/aliccp_synthetic --processes 1 2
    python -m benchmarks.worker_phases --encoded /tmp/pf --processes 1 8 16 --chunks 16
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import tempfile
import time
from pathlib import Path

from benchmarks.conf import parameters
from benchmarks.machine import machine


class _Clock:
    """Wall and CPU seconds of wrapped functions, summed by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                acc = self.seconds.setdefault(name, [0.0, 0.0])
                acc[0] += time.perf_counter() - w
                acc[1] += time.process_time() - c

        return timed


def _data_config():
    from rec_pipeline.config import load_section

    return load_section("data", parameters("base")["data"])


def _parse_work(tasks: list[tuple[str, str, int, int]]) -> dict:
    """One process's parse tasks ``(path, kind, start, end)``, timed in parts."""
    from rec_pipeline.data.aliccp import SKELETON_KIND, FileParser, compiled, parser
    from rec_pipeline.data.shards import write_parquet

    clock, data = _Clock(), _data_config()
    parsers: dict[str, FileParser] = {}

    def parser_of(path: str, kind: str) -> FileParser:
        if path not in parsers:
            fields = data.fields.skeleton if kind == SKELETON_KIND else data.fields.common
            parsers[path] = FileParser(path, kind, fields, data.chunk_mb << 20)
        return parsers[path]

    # Untimed: the first call loads the compiled tokenizer from its cache (~0.4 s a process).
    path, kind, start, end = tasks[0]
    parser_of(path, kind)._parse_range(start, end)
    compiled.tokenize = clock.wrap("tokenize", compiled.tokenize)
    compiled.group_by_field = clock.wrap("group by field", compiled.group_by_field)
    parser._append_list_columns = clock.wrap("Arrow list columns", parser._append_list_columns)
    write = clock.wrap("Parquet write", write_parquet)
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:

        def run() -> None:
            for i, (path, kind, start, end) in enumerate(tasks):
                parse = clock.wrap("parse range", parser_of(path, kind)._parse_range)
                rows, _, _ = parse(start, end)
                out = Path(d) / f"{i}.parquet"
                write(rows, out)
                out.unlink()

        total = clock.wrap("total", run)
        total()
    s = clock.seconds
    inner = ("tokenize", "group by field", "Arrow list columns")
    s["rest of the parse"] = [s["parse range"][k] - sum(s[n][k] for n in inner) for k in (0, 1)]
    del s["parse range"]
    return s


def _encode_work(context: str, tasks: list[tuple[str, str, str, int]]) -> dict:
    """One process's encode tasks (``encode._encode_chunk``'s arguments), timed in parts."""
    import pyarrow.parquet as pq

    from rec_pipeline.data import encode, vocab

    clock = _Clock()

    class _Reader:  # encode's module-level ``pq``, with its read timed
        read_table = staticmethod(clock.wrap("Parquet read", pq.read_table))

    encode.pq = _Reader
    encode.write_part = clock.wrap("Parquet write", encode.write_part)
    encode.CommonIndex.rows = clock.wrap("join to commons", encode.CommonIndex.rows)
    vocab.Vocabulary.lookup = clock.wrap("vocabulary lookup", vocab.Vocabulary.lookup)
    encode.split_train_rows = clock.wrap("train/valid split", encode.split_train_rows)
    with open(context, "rb") as fh:
        ctx = clock.wrap("context load", pickle.load)(fh)

    def run() -> None:
        for task in tasks:
            encode._encode_chunk(ctx, *task)

    clock.wrap("total", run)()
    return clock.seconds


def _assign(lists: list[list], n: int, per_process: int) -> list[list]:
    """``per_process`` tasks for each of ``n`` processes, half from each list, different ones
    in each process while the lists last."""
    half = per_process // 2
    return [
        [lst[(p * half + k) % len(lst)] for lst in lists for k in range(half)] for p in range(n)
    ]


def _parse_lists(raw: Path) -> list[list]:
    from rec_pipeline.data.aliccp import COMMON_KIND, SKELETON_KIND
    from rec_pipeline.data.aliccp.parts import _line_ranges

    chunk = _data_config().chunk_mb << 20
    lists = []
    for name, kind in (
        ("common_features_train.csv", COMMON_KIND),
        ("sample_skeleton_train.csv", SKELETON_KIND),
    ):
        path = raw / name
        lists.append([(str(path), kind, s, e) for s, e in _line_ranges(path, chunk)])
    return lists


def _encode_setup(folder: Path, staging: Path) -> tuple[str, list[list]]:
    """The encode context pickled into ``staging`` (as ``encode_splits`` does), and the task
    lists of the training split's parsed shards."""
    import pandas as pd

    from rec_pipeline.config import load_section
    from rec_pipeline.data.encode import encode_context
    from rec_pipeline.data.shards import ShardSet
    from rec_pipeline.data.vocab import Vocabulary

    data = _data_config()
    hashing = load_section("vocab", parameters("base")["vocab"]).hash_buckets
    lookup = Vocabulary(pd.read_parquet(folder / "vocabularies.parquet"), hashing)
    parsed = {n: ShardSet(folder / f"parsed_{n}") for n in ("train_commons", "test_commons")}
    f = data.fields
    _, ctx = encode_context(
        parsed, f.skeleton, f.common, lookup, data.valid_fraction, data.seed, staging
    )
    context = staging / "context.pickle"
    with open(context, "wb") as fh:
        pickle.dump(ctx, fh, protocol=pickle.HIGHEST_PROTOCOL)
    lists = []
    for kind in ("commons", "samples"):
        files = ShardSet(folder / f"parsed_train_{kind}").files
        lists.append([(str(p), "train", kind, c) for c, p in enumerate(files)])
    return str(context), lists


def _table(stage: str, runs: dict[int, tuple[float, list[dict]]]) -> str:
    names = sorted({k for _, res in runs.values() for r in res for k in r} - {"total"})
    counts = sorted(runs)
    lines = [
        f"| {stage}: seconds per process (wall / CPU) | "
        + " | ".join(f"{n} processes" for n in counts)
        + " |",
        "|---" * (len(counts) + 1) + "|",
    ]
    for name in [*names, "total"]:
        cells = []
        for n in counts:
            res = runs[n][1]
            w = sum(r.get(name, [0, 0])[0] for r in res) / len(res)
            c = sum(r.get(name, [0, 0])[1] for r in res) / len(res)
            cells.append(f"{w:.2f} / {c:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    start = [f"{runs[n][0] - max(r['total'][0] for r in runs[n][1]):.2f}" for n in counts]
    lines.append("| pool start-up (wall) | " + " | ".join(start) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--raw", type=Path, help="raw folder: time the parse tasks")
    src.add_argument("--encoded", type=Path, help="encode_folder's output: time the encode tasks")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--chunks", type=int, default=16, help="tasks per process (even)")
    args = ap.parse_args()
    print(machine())
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as staging:
        if args.raw:
            stage, lists, work, extra = "parse", _parse_lists(args.raw), _parse_work, ()
            work(lists[0][:1])  # the tokenizer compiled into its cache before any timing
        else:
            context, lists = _encode_setup(args.encoded, Path(staging))
            stage, work, extra = "encode", _encode_work, (context,)
        runs = {}
        for n in args.processes:
            jobs = [(*extra, tasks) for tasks in _assign(lists, n, args.chunks)]
            start = time.perf_counter()
            with ctx.Pool(n) as pool:
                results = pool.starmap(work, jobs)
            runs[n] = (time.perf_counter() - start, results)
    print(_table(stage, runs))


if __name__ == "__main__":
    main()
