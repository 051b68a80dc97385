"""Training-step time of two source trees on the same encoded data (e.g. before and after a
change to the training loop), on one device.

``prepare`` generates planted-truth data and runs the data processing into a folder (this
tree's ``rec_pipeline.data.processing``); ``time`` times ``Trainer._train_step`` of whichever
``rec_pipeline`` is importable, on that folder, so an older checkout's tree can be timed on the
same data with ``PYTHONPATH=<checkout>/src`` (its own ``parameters.yml`` given by ``--params``).
Run the trees alternately (new, old, new) in one session: the spread between the two runs of a
tree is the noise.

    python -m benchmarks.bench_step_trees prepare /tmp/w --rows 1000000
    python -m benchmarks.bench_step_trees time /tmp/w --label new
    PYTHONPATH=../old/src python -m benchmarks.bench_step_trees time /tmp/w --label old \\
        --params ../old/conf/base/parameters.yml
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml


def prepare(folder: Path, rows: int) -> None:
    from rec_pipeline.config import load_config, load_section
    from rec_pipeline.data.processing import process_folder
    from rec_pipeline.data.raw import RawFiles
    from rec_pipeline.data.synthetic import write_synthetic

    world = {"n_train_rows": rows, "n_test_rows": max(rows // 5, 1)}
    write_synthetic(folder / "raw", load_section("synthetic", world).build())
    cfg = load_config(yaml.safe_load(Path("conf/base/parameters.yml").read_text()))
    data = process_folder(RawFiles(folder / "raw").check(), cfg.data, cfg.vocab, folder / "proc")
    (folder / "proc" / "metadata.json").write_text(json.dumps(data.metadata.to_dict()))
    print(json.dumps(data.seconds))


def step_time(folder: Path, params: dict, batch: int, steps: int, warmup: int) -> dict:
    """Mean ms of ``_train_step`` over ``steps`` planned batches (synchronised at both ends)."""
    from rec_pipeline.config import load_config
    from rec_pipeline.data.batches import load_splits
    from rec_pipeline.data.shards import ShardSet
    from rec_pipeline.train.loop import Trainer

    proc = folder / "proc"
    meta = json.loads((proc / "metadata.json").read_text())
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    p = json.loads(json.dumps(params))
    p["data"]["batch_size"] = batch
    never = 10**9
    p["runtime"].update(
        {"progress_bar": False, "log_every": never, "valid_every": never, "grad_diag_every": never}
    )
    cfg = load_config(p)
    train = ShardSet(proc / "sampled" / "encoded_train")
    split = load_splits(meta, {"train": train}, ShardSet(proc / "encoded_train_commons"), dev)
    trainer = Trainer(cfg, meta, split["train"], None)
    data = trainer.train_data
    plan = data.plan(np.random.default_rng(0).permutation(len(data)), batch)
    n = len(plan.bounds) - 1
    for i in range(warmup):
        trainer._train_step(data.planned_batch(plan, i % n))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        trainer._train_step(data.planned_batch(plan, (warmup + i) % n))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t) / steps * 1e3
    return {"batch": batch, "ms_per_step": ms, "samples_per_s": batch / ms * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["prepare", "time"])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--label", default="this tree")
    ap.add_argument("--params", default="conf/base/parameters.yml")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 16384])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    if args.what == "prepare":
        prepare(args.folder, args.rows)
        return
    params = yaml.safe_load(Path(args.params).read_text())
    for batch in args.batch_sizes:
        row = step_time(args.folder, params, batch, args.steps, args.warmup)
        print(json.dumps({"tree": args.label, **row}), flush=True)


if __name__ == "__main__":
    main()
