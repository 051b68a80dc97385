"""Negative sampling throughput at several worker counts (``data.workers``).

Processes a raw folder once with the library's own steps (no Kedro) into ``--work``, then
samples its ``encoded_train_all`` shards at each worker count, writing the kept rows as a shard
folder as the catalog does, and prints rows/s and the kept rows (the same at every count).

    python -m benchmarks.bench_sampling --raw <raw folder> --work /tmp/bs --workers 1 2 4 8 16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from benchmarks.conf import parameters
    from rec_pipeline.config import load_config
    from rec_pipeline.data.processing import STAGING, process_folder
    from rec_pipeline.data.raw import RawFiles
    from rec_pipeline.data.sampling import sample_negatives
    from rec_pipeline.data.shards import ShardSet, ShardWriter

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--env", default="base", help="conf environment merged over conf/base")
    args = ap.parse_args()
    cfg = load_config(parameters(args.env))
    process_folder(RawFiles(args.raw).check(), cfg.data, cfg.vocab, args.work)
    shards = ShardSet(args.work / "encoded_train_all")
    print(f"{len(shards.files)} shards, {shards.num_rows:,} rows")
    for workers in args.workers:
        out = ShardWriter(args.work / f"bench_sampled_{workers}")
        out.reset()
        t0 = time.perf_counter()
        report = None
        for rows, so_far in sample_negatives(
            shards,
            cfg.data.neg_keep_prob_train,
            staging=args.work / STAGING,
            workers=workers,
        ):
            out.write(rows)
            report = so_far
        seconds = time.perf_counter() - t0
        row = {
            "workers": workers,
            "seconds": seconds,
            "rows_per_s": report["rows_in"] / seconds,
            "rows_in": report["rows_in"],
            "rows_kept": report["kept"]["rows"],
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
