"""Where a training step's time goes: per-phase timings and the profiler's top operators.

    python -m benchmarks.profile_step --data-root data --device cuda --batch-size 4096

Phases are timed with a device synchronisation around each one (so they add up to more than an
unsynchronised step), then 10 steps run under ``torch.profiler`` and the top operators by self
CPU time and by device time are printed.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks import encoded_data
from rec_pipeline.config import load_config
from rec_pipeline.train.loop import Trainer, autocast
from rec_pipeline.train.losses import compute_losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--params", default="conf/base/parameters.yml")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()

    dev = torch.device(args.device)
    meta, splits, _ = encoded_data.load(args.data_root, dev)
    train = splits["train"]
    p = copy.deepcopy(yaml.safe_load(Path(args.params).read_text()))
    p["data"]["batch_size"] = args.batch_size
    p["runtime"].update({"device": args.device, "progress_bar": False, "auto_eval": False})
    cfg = load_config(p)
    tr = Trainer(cfg, meta, train, None)
    plan = train.plan(np.random.default_rng(0).permutation(len(train)), args.batch_size)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    phases: dict[str, float] = defaultdict(float)

    def timed(name, fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        phases[name] += time.perf_counter() - t
        return out

    for i in range(args.steps + 10):
        if i == 10:
            phases.clear()
        b = timed("gather", lambda i=i: train.planned_batch(plan, i % len(plan)))

        def forward(b=b):
            with autocast(dev, tr.amp_dtype):
                return tr.model(b)

        out = timed("forward", forward)
        res = timed(
            "losses",
            lambda out=out, b=b, i=i: compute_losses(
                out, b.click, b.conversion, step=i, cfg=tr.cfg, pos_weight=tr.pos_weights.current(i)
            ),
        )
        timed("zero_grad", tr.opt.zero_grad)
        timed("backward", res.total.backward)
        timed(
            "clip",
            lambda: torch.nn.utils.clip_grad_norm_(tr.opt.dense.param_groups[0]["params"], 2.0),
        )
        timed("dense_step", tr.opt.dense.step)
        if tr.opt.sparse is not None:
            timed("sparse_step", tr.opt.sparse.step)
        timed("schedulers", tr.scheds.step)
    total = sum(phases.values())
    print(
        f"\nbatch {args.batch_size}: {1e3 * total / args.steps:.2f} ms/step (synchronised phases)"
    )
    for k, v in phases.items():
        print(f"  {k:12s} {1e3 * v / args.steps:8.3f} ms  {100 * v / total:5.1f} %")

    acts = [torch.profiler.ProfilerActivity.CPU]
    if dev.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for i in range(10):
            tr._train_step(train.planned_batch(plan, i % len(plan)))
        sync()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22))
    if dev.type == "cuda":
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=15))


if __name__ == "__main__":
    main()
