"""Time the exact AUC (rec_pipeline.metrics.auc.roc_auc) on N rows.

Examples::

    python -m benchmarks.bench_auc                      # 40M rows, CPU (NumPy path)
    python -m benchmarks.bench_auc --device cuda        # 40M rows made on the GPU (copied to the host)
    python -m benchmarks.bench_auc --n 10000000 --repeats 3

Scores are float32 sigmoid outputs whose logits depend on the label (AUC about 0.7), with a
CTR-like positive rate. After a warm-up the call is repeated and the median wall time reported
(CUDA timings are synchronised). Agreement with ``sklearn.metrics.roc_auc_score`` is checked on a
random subsample (default 1M rows). The last line printed is a markdown table row for
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from benchmarks.machine import cpu_model
from rec_pipeline.metrics.auc import roc_auc

TABLE_HEADER = (
    "| device | rows | dtype | pos rate | median s | min s | Mrows/s | AUC | "
    "max abs diff vs sklearn (check rows) |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def make_data(n: int, pos_rate: float, dtype: str, device: str, seed: int):
    gen = torch.Generator(device=device).manual_seed(seed)
    labels = torch.rand(n, generator=gen, device=device) < pos_rate
    logits = torch.randn(n, generator=gen, device=device) + 0.8 * labels.float() - 3.0
    scores = torch.sigmoid(logits).to(getattr(torch, dtype))
    return scores, labels


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU {cpu_model()}, {os.cpu_count()} cores"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=40_000_000, help="rows (default 40M)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument(
        "--dtype", choices=["float32", "float64", "bfloat16", "float16"], default="float32"
    )
    ap.add_argument("--pos-rate", type=float, default=0.039, help="positive rate (default 0.039)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--check-n", type=int, default=1_000_000, help="rows checked against sklearn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-header", action="store_true", help="print only the table row")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2

    scores, labels = make_data(args.n, args.pos_rate, args.dtype, args.device, args.seed)
    if args.device == "cpu":
        # roc_auc views CPU tensors as NumPy arrays; time it on plain arrays.
        cpu_scores = scores.float() if args.dtype == "bfloat16" else scores
        scores_in, labels_in = cpu_scores.numpy(), labels.numpy()
    else:
        scores_in, labels_in = scores, labels

    result = None
    for _ in range(args.warmup):
        result = roc_auc(scores_in, labels_in)
    sync(args.device)
    times = []
    for _ in range(args.repeats):
        sync(args.device)
        t0 = time.perf_counter()
        result = roc_auc(scores_in, labels_in)
        sync(args.device)
        times.append(time.perf_counter() - t0)
    assert result is not None and result.value is not None, result

    # Agreement with scikit-learn on a random subsample (same function, same device).
    rng = np.random.default_rng(args.seed)
    m = min(args.check_n, args.n)
    idx_np = np.sort(rng.choice(args.n, size=m, replace=False))
    idx = torch.as_tensor(idx_np, device=scores.device)
    sub_s, sub_y = scores[idx], labels[idx]
    ours = roc_auc(sub_s, sub_y).value
    ref = roc_auc_score(sub_y.cpu().numpy(), sub_s.float().cpu().numpy())
    diff = abs(ours - ref)

    med, best = statistics.median(times), min(times)
    row = (
        f"| {device_name(args.device)} | {args.n:,} | {args.dtype} | {args.pos_rate:g} | "
        f"{med:.3f} | {best:.3f} | {args.n / med / 1e6:.1f} | {result.value:.6f} | "
        f"{diff:.1e} ({m:,}) |"
    )
    print(f"times (s): {', '.join(f'{t:.3f}' for t in times)}", file=sys.stderr)
    if not args.no_header:
        print(TABLE_HEADER)
    print(row)
    if diff > 1e-9:
        print(f"MISMATCH vs sklearn: {diff:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
