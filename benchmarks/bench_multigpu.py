"""Data-parallel scaling: samples/s and test AUCs on 1 and N local GPUs at a fixed per-GPU batch.

Each run is the library's own training (``rec_pipeline.train.run.train``: with
``runtime.devices`` > 1 it spawns the ranks itself) on one raw folder encoded once, followed by
the test split's evaluation, through the peers harness's ``run_ours``. For every (batch, step
mode) the runs on 1 and on N GPUs train the same number of epochs, so they see the same samples
(N GPUs take 1/N of the steps at N times the global batch), and their test AUCs are comparable.

Throughput is the median of the log windows after the first (the first holds the warm-up and
the graph capture; validation is excluded from every window), counted over all ranks' rows.

    python -m benchmarks.bench_multigpu --raw <raw folder> --work /tmp/mg --devices 1 2 \\
        --batch-sizes 1024 16384 --step-modes graph eager --json out.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.conf import parameters

#: Steps per throughput window: short enough for several windows at batch 16,384, long enough
#: that the window's host read (the loss log) is a small part of it.
LOG_EVERY = 20


def _one(
    raw: Path, work: Path, device: str, devices: int, batch: int, mode: str, epochs: int, seed: int
):
    from benchmarks.peers.ours import run_ours

    over = (
        f"runtime.devices={devices},data.batch_size={batch},runtime.step_mode={mode},"
        f"runtime.epochs={epochs},runtime.log_every={LOG_EVERY}"
    )
    out = run_ours(raw, parameters("base"), over, work_dir=work, device=device, seed=seed)
    summary = out["train_summary"]
    windows = out["window_samples_per_s"]
    steady = windows[1:-1] or windows  # the last window may be a short one
    return {
        "devices": devices,
        "batch_per_gpu": batch,
        "step_mode": mode,
        "epochs": epochs,
        "seed": seed,
        "steps": summary["steps"],
        "samples_per_s": statistics.median(steady),
        "samples_per_s_whole_run": summary["samples_per_s"],
        "train_s": out["train_s"],
        "peak_gpu_memory_gb": summary.get("peak_gpu_memory_bytes", 0) / 1e9,
        **out["self_reported"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 16384])
    ap.add_argument("--step-modes", nargs="+", default=["graph"])
    ap.add_argument(
        "--epochs",
        type=int,
        nargs="+",
        default=None,
        help="epochs per batch size, in --batch-sizes order (default: the base recipe's)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cuda", help="cuda (NCCL), or cpu (gloo) to try it out")
    ap.add_argument("--json", type=Path, help="append one JSON line per run")
    args = ap.parse_args()
    epochs = args.epochs or [parameters("base")["runtime"]["epochs"]] * len(args.batch_sizes)
    rows = []
    for batch, n_epochs in zip(args.batch_sizes, epochs, strict=True):
        for mode in args.step_modes:
            for devices in args.devices:
                row = _one(
                    args.raw, args.work, args.device, devices, batch, mode, n_epochs, args.seed
                )
                base = next(
                    (r for r in rows if (r["batch_per_gpu"], r["step_mode"]) == (batch, mode)),
                    row,
                )
                row["speedup_vs_first"] = row["samples_per_s"] / base["samples_per_s"]
                rows.append(row)
                line = json.dumps(row)
                print(line, flush=True)
                if args.json:
                    with args.json.open("a") as f:
                        f.write(line + "\n")
    print(
        f"\n{'batch/GPU':>9} {'mode':>6} {'GPUs':>4} {'samples/s':>11} {'speed-up':>8} "
        f"{'primary':>8} {'CTR':>7} {'CVR':>7} {'CTCVR':>7}"
    )
    for r in rows:
        print(
            f"{r['batch_per_gpu']:>9} {r['step_mode']:>6} {r['devices']:>4} "
            f"{r['samples_per_s']:>11,.0f} {r['speedup_vs_first']:>8.2f} {r['auc_primary']:>8.4f} "
            f"{r['auc_ctr']:>7.4f} {r['auc_cvr']:>7.4f} {r['auc_ctcvr']:>7.4f}"
        )


if __name__ == "__main__":
    main()
