"""Training-step throughput on encoded data: samples/s, the batch-gather floor, peak memory.

Reads the latest encoded splits and metadata of a project data root (run `kedro run --pipeline=data`
first), loads them onto the device once, and times, per batch size:

* ``gather``: building batches only (slices of the epoch's plan and jagged gathers on the
  device), the floor under any training step; ``plan_epoch_s`` is the once-per-epoch planning;
* ``step``: a full training step (gather, forward under autocast, fp32 losses, backward, dense
  AdamW + sparse Adam, schedulers), through the project's own Trainer.

    python -m benchmarks.bench_training --data-root data --device cuda --batch-sizes 1024 4096 16384
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks import encoded_data
from benchmarks.peers.ours import apply_overrides
from rec_pipeline.config import load_config
from rec_pipeline.data.batches import SplitData
from rec_pipeline.train.loop import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(train: SplitData, plan, k: int):
    """k batches of the epoch plan, wrapping around."""
    for i in range(k):
        yield train.planned_batch(plan, i % len(plan))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--params", default="conf/base/parameters.yml")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--steps", type=int, default=200, help="timed steps per batch size")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument(
        "--override", default="", help='dotted parameter overrides, e.g. "runtime.amp=false"'
    )
    args = ap.parse_args()

    device = torch.device(args.device)
    t0 = time.perf_counter()
    meta, splits, _ = encoded_data.load(args.data_root, device)
    train = splits["train"]
    load_s = time.perf_counter() - t0
    base = apply_overrides(yaml.safe_load(Path(args.params).read_text()), args.override)
    rows = []
    for bs in args.batch_sizes:
        p = copy.deepcopy(base)
        p["data"]["batch_size"] = bs
        total = args.warmup + args.steps
        p["runtime"].update(
            {
                "device": args.device,
                "max_train_steps": total,
                "epochs": 1000,
                "progress_bar": False,
                "grad_diag_enabled": False,
                "log_health_metrics": False,
                "log_every": 10**9,
                "auto_eval": False,
                "save_last": False,
            }
        )
        p["optim"]["lr_scheduler"]["total_steps"] = total + 1
        p["optim"]["lr_scheduler"]["warmup_steps"] = 1
        cfg = load_config(p)
        trainer = Trainer(cfg, meta, train, None)
        order = np.random.default_rng(0).permutation(len(train))
        _sync(device)
        t = time.perf_counter()
        plan = train.plan(order, bs)  # once per epoch in training
        _sync(device)
        plan_s = time.perf_counter() - t
        batches = functools.partial(_batches, train, plan)

        # The data path alone.
        for _ in batches(args.warmup):
            pass
        _sync(device)
        t = time.perf_counter()
        for _ in batches(args.steps):
            pass
        _sync(device)
        gather_s = (time.perf_counter() - t) / args.steps

        # Full steps through the trainer's own step function.
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        it = batches(total)
        for _, b in zip(range(args.warmup), it, strict=False):
            trainer._train_step(b)
            trainer.step += 1
        _sync(device)
        t = time.perf_counter()
        for b in it:
            trainer._train_step(b)
            trainer.step += 1
        _sync(device)
        step_s = (time.perf_counter() - t) / args.steps
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        row = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "batch_size": bs,
            "train_rows": len(train),
            "gather_ms": gather_s * 1e3,
            "step_ms": step_s * 1e3,
            "samples_per_s": bs / step_s,
            "gather_share": gather_s / step_s,
            "peak_gpu_mib": None if peak is None else peak / 2**20,
            "amp": str(trainer.amp_dtype),
            "override": args.override,
            "load_s": load_s,
            "plan_epoch_s": plan_s,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| device | batch | step ms | gather ms | samples/s | peak GPU MiB | AMP |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        peak = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:,.0f}"
        print(
            f"| {r['device']} | {r['batch_size']} | {r['step_ms']:.2f} | {r['gather_ms']:.2f} | "
            f"{r['samples_per_s']:,.0f} | {peak} | {r['amp']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
