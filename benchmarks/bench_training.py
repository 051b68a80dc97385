"""Training-step throughput on encoded data: samples/s, the batch-gather floor, peak memory.

Reads the latest encoded splits and metadata of a project data root (run `kedro run --pipeline=data`
first), loads them onto the device once, and times, per batch size:

* ``gather``: building batches only (slices of the epoch's plan and jagged gathers on the
  device), the floor under any training step; ``plan_epoch_s`` is the once-per-epoch planning;
* ``step``: a full training step (gather, forward under autocast, fp32 losses, backward, dense
  AdamW + sparse Adam, schedulers), through the project's own Trainer, for each
  ``runtime.step_mode`` asked for (``eager``, ``graph``: the captured static step);
* ``eval``: forward-only scoring of the whole training split at ``--eval-batch`` rows (rows/s).

    python -m benchmarks.bench_training --data-root data --device cuda --batch-sizes 1024 4096 16384
    python -m benchmarks.bench_training --raw data/world2/01_raw/aliccp_synthetic --work /tmp/w2 \
        --step-modes eager graph

``--raw`` processes a raw folder with the library's own steps (no Kedro) into ``--work`` first.
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
from rec_pipeline.train.evaluation import predict
from rec_pipeline.train.loop import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(train: SplitData, plan, k: int):
    """k batches of the epoch plan, wrapping around."""
    for i in range(k):
        yield train.planned_batch(plan, i % len(plan))


def _stepper(trainer: Trainer, train: SplitData, plan):
    """``steps(k)``: k training steps of the trainer's mode over the plan, wrapping around."""
    graph, position = trainer.graph, 0
    n_static = 0 if graph is None else graph.load(plan, 0)
    batches = _batches(train, plan, 10**9)

    def steps(k: int) -> None:
        nonlocal position
        for _ in range(k):
            if graph is None:
                trainer._train_step(next(batches))
            else:
                if position and position % n_static == 0:
                    graph.load(plan, 0)  # the same buffers: no new capture
                graph.run()
            trainer.step += 1
            position += 1

    return steps


def _load(args, device):
    """(metadata, train split): a Kedro data root's latest encoding, or a raw folder's."""
    if not args.raw:
        meta, splits, _ = encoded_data.load(args.data_root, device)
        return meta, splits["train"]
    from rec_pipeline.data.batches import load_splits
    from rec_pipeline.data.processing import process_folder
    from rec_pipeline.data.raw import RawFiles

    cfg = load_config(yaml.safe_load(Path(args.params).read_text()))
    data = process_folder(RawFiles(Path(args.raw)).check(), cfg.data, cfg.vocab, Path(args.work))
    splits = load_splits(
        data.metadata, {"train": data.encoded("train")}, data.encoded("train_commons"), device
    )
    return data.metadata, splits["train"]


def _eval_rows_per_s(trainer: Trainer, train: SplitData, batch_size: int, device) -> float:
    predict(trainer.model, train, batch_size, max_batches=2)  # warm-up
    _sync(device)
    t = time.perf_counter()
    predict(trainer.model, train, batch_size)
    _sync(device)
    return len(train) / (time.perf_counter() - t)


def _measure(args, base: dict, meta, train: SplitData, bs: int, mode: str, device) -> dict:
    """One (batch size, step mode): gather floor, step time, peak memory, eval throughput."""
    p = copy.deepcopy(base)
    p["data"]["batch_size"] = bs
    total = args.warmup + args.steps
    p["runtime"].update(
        {
            "device": args.device,
            "step_mode": mode,
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
    # The aux-focal term on from the first step: the objective of most of a run (its switch is a
    # value on the device, so no new capture or compilation either way).
    p["loss"]["aux_focal"]["warmup_steps"] = 0
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

    # The data path alone (the eager step's gather; the graph step gathers inside its graph).
    for _ in batches(args.warmup):
        pass
    _sync(device)
    t = time.perf_counter()
    for _ in batches(args.steps):
        pass
    _sync(device)
    gather_s = (time.perf_counter() - t) / args.steps

    # Full steps through the trainer's own step (warm-up includes the graph's capture).
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps = _stepper(trainer, train, plan)
    steps(args.warmup)
    _sync(device)
    t = time.perf_counter()
    steps(args.steps)
    _sync(device)
    step_s = (time.perf_counter() - t) / args.steps
    if trainer.graph is not None:
        trainer.graph.poll(0)  # a non-finite step would raise here
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "step_mode": mode,
        "batch_size": bs,
        "train_rows": len(train),
        "gather_ms": gather_s * 1e3,
        "step_ms": step_s * 1e3,
        "samples_per_s": bs / step_s,
        "gather_share": gather_s / step_s,
        "peak_gpu_mib": None if peak is None else peak / 2**20,
        "eval_rows_per_s": _eval_rows_per_s(trainer, train, args.eval_batch, device),
        "amp": str(trainer.amp_dtype),
        "override": args.override,
        "plan_epoch_s": plan_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--raw", default=None, help="a raw folder to process first (no Kedro)")
    ap.add_argument("--work", default="/tmp/bench_training", help="where --raw is processed")
    ap.add_argument("--step-modes", nargs="+", default=["eager"], choices=["eager", "graph"])
    ap.add_argument("--eval-batch", type=int, default=65536)
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
    meta, train = _load(args, device)
    load_s = time.perf_counter() - t0
    base = apply_overrides(yaml.safe_load(Path(args.params).read_text()), args.override)
    rows = []
    for bs in args.batch_sizes:
        for mode in args.step_modes:
            row = _measure(args, base, meta, train, bs, mode, device)
            row["load_s"] = load_s
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        "\n| device | step mode | batch | step ms | gather ms | samples/s | eval rows/s "
        "| peak GPU MiB | AMP |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:,.0f}"
        print(
            f"| {r['device']} | {r['step_mode']} | {r['batch_size']} | {r['step_ms']:.3f} | "
            f"{r['gather_ms']:.2f} | {r['samples_per_s']:,.0f} | {r['eval_rows_per_s']:,.0f} "
            f"| {peak} | {r['amp']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
