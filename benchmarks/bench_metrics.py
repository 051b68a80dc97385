"""Time the evaluation's host metrics at Ali-CCP's size: the whole metric dict of a test split
(``compute_metrics`` with the planted truth: three AUCs, three oracle AUCs, log losses and
calibration bins) and the Platt fit of a validation split (``fit_platt``).

Examples::

    python -m benchmarks.bench_metrics                              # 43M test / 4.2M valid rows
    python -m benchmarks.bench_metrics --test-rows 4000000 --valid-rows 400000 --repeats 3

The rows are drawn like a CTR log (3.9 % clicks, 0.5 % of clicks convert; scores that depend on
the labels), in float32 as the heads output them. Each call is repeated and the best and the
median wall time are printed, then a markdown table row for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.machine import machine
from rec_pipeline.metrics.calibration import fit_platt
from rec_pipeline.metrics.evaluate import compute_metrics


def make_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    """Labels, the heads' float32 outputs and the true probabilities of ``n`` rows."""
    rng = np.random.default_rng(seed)
    logit_ctr = rng.standard_normal(n) - 3.4
    p_ctr_true = 1.0 / (1.0 + np.exp(-logit_ctr))
    p_cvr_true = 1.0 / (1.0 + np.exp(-(rng.standard_normal(n) - 5.3)))
    click = (rng.random(n) < p_ctr_true).astype(np.int8)
    conversion = (click * (rng.random(n) < p_cvr_true)).astype(np.int8)
    noise = rng.standard_normal((2, n))
    p_ctr = 1.0 / (1.0 + np.exp(-(logit_ctr + noise[0])))
    p_cvr = 1.0 / (1.0 + np.exp(-(np.log(p_cvr_true / (1 - p_cvr_true)) + noise[1])))
    return {
        "click": click,
        "conversion": conversion,
        "p_ctr": p_ctr.astype(np.float32),
        "p_cvr": p_cvr.astype(np.float32),
        "truth": {"p_ctr": p_ctr_true, "p_cvr": p_cvr_true},
    }


def timed(fn, repeats: int) -> tuple[float, float]:
    """(best, median) wall seconds of ``repeats`` calls."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return min(seconds), statistics.median(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-rows", type=int, default=43_000_000)
    ap.add_argument("--valid-rows", type=int, default=4_200_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    test = make_rows(args.test_rows, args.seed)
    valid = make_rows(args.valid_rows, args.seed + 1)

    def metrics():
        return compute_metrics(
            test["click"],
            test["conversion"],
            test["p_ctr"],
            test["p_cvr"],
            esmm=True,
            truth=test["truth"],
            calibration={"ctr": [1.0, 0.0], "cvr": [1.0, 0.0]},
        )

    m_best, m_median = timed(metrics, args.repeats)
    p_best, p_median = timed(lambda: fit_platt(valid["p_ctr"], valid["click"]), args.repeats)
    print(machine())
    print(f"compute_metrics, {args.test_rows:,} rows: best {m_best:.2f} s, median {m_median:.2f} s")
    print(f"fit_platt, {args.valid_rows:,} rows: best {p_best:.2f} s, median {p_median:.2f} s")
    print(
        "| test rows | metric dict s (best / median) | valid rows | Platt fit s (best / median) |"
    )
    print(
        f"| {args.test_rows:,} | {m_best:.2f} / {m_median:.2f} | {args.valid_rows:,} "
        f"| {p_best:.2f} / {p_median:.2f} |"
    )


if __name__ == "__main__":
    main()
