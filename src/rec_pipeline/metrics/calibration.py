"""Log loss, calibration bins, the negative-sampling correction and Platt scaling.

Everything here works on host NumPy arrays in float64 (inputs pass through
:func:`~rec_pipeline.metrics.arrays.to_numpy`). Large inputs are processed in chunks so
the float64 temporaries stay bounded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .arrays import to_numpy

__all__ = [
    "DEFAULT_EPS",
    "apply_platt",
    "bin_index",
    "calibrated",
    "calibration_bins",
    "correct_negative_sampling",
    "fit_platt",
    "logloss",
]

#: Probabilities are clipped to ``[eps, 1 - eps]`` before taking logs.
DEFAULT_EPS = 1e-7
_CHUNK = 1 << 22  # 4M rows per float64 chunk


def _check_same_length(p: np.ndarray, y: np.ndarray) -> None:
    if p.size != y.size:
        raise ValueError(f"predictions and labels differ in length: {p.size} != {y.size}")


def logloss(p: Any, y: Any, eps: float = DEFAULT_EPS) -> float | None:
    """Mean binary cross-entropy of probabilities ``p`` against labels ``y`` (natural log).

    ``p`` is clipped to ``[eps, 1 - eps]``; accumulation is in float64 and chunked. ``y`` may be
    soft labels in [0, 1]. Returns ``None`` for empty input.
    """
    p = to_numpy(p)
    y = to_numpy(y)
    _check_same_length(p, y)
    if p.size == 0:
        return None
    if not 0.0 <= eps < 0.5:
        raise ValueError("eps must be in [0, 0.5)")
    total = 0.0
    for start in range(0, p.size, _CHUNK):
        pc = np.clip(p[start : start + _CHUNK].astype(np.float64), eps, 1.0 - eps)
        yc = y[start : start + _CHUNK].astype(np.float64)
        total += float(np.sum(yc * np.log(pc) + (1.0 - yc) * np.log1p(-pc)))
    return -total / p.size


def rescale_odds(q: Any, factor: float) -> Any:
    """The probability whose odds are ``factor`` times those of ``q``: ``q / (q + (1 - q) / f)``.

    Same input types as :func:`correct_negative_sampling`; ``factor == 1`` returns ``q``.
    """
    f = float(factor)
    if not f > 0.0:
        raise ValueError(f"odds factor must be > 0, got {factor!r}")
    if f == 1.0:
        return q
    if np.isscalar(q):
        qf = float(q)
        return qf / (qf + (1.0 - qf) / f)
    qa = np.asarray(q)
    if qa.dtype.kind != "f":
        qa = qa.astype(np.float64)
    return qa / (qa + (1.0 - qa) / f)


def correct_negative_sampling(q: Any, keep_prob: float) -> Any:
    """Undo negative down-sampling: ``p = q / (q + (1 - q) / keep_prob)``.

    ``q`` is the probability predicted by a model trained on data where each negative was kept
    with probability ``keep_prob``; ``p`` is the probability on the unsampled population.
    Accepts floats and NumPy arrays (the result keeps a float input's dtype; integer input gives
    float64). ``keep_prob == 1`` returns ``q`` unchanged.
    """
    keep = float(keep_prob)
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob!r}")
    return rescale_odds(q, keep)


def _bin_edges(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        edges = np.quantile(p.astype(np.float64), np.linspace(0.0, 1.0, n_bins + 1))
        return np.unique(edges)  # ties collapse bins
    raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")


def bin_index(
    p: Any, n_bins: int = 10, strategy: str = "quantile"
) -> tuple[np.ndarray, np.ndarray]:
    """Bin assignment used by :func:`calibration_bins`: ``(index per row, edges)``.

    Bin ``i`` holds ``edges[i] <= p < edges[i + 1]``; the last bin is closed on the right and
    values outside the edges go to the first/last bin.
    """
    p = to_numpy(p)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    if p.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    edges = _bin_edges(p, n_bins, strategy)
    n_real = max(edges.size - 1, 1)
    idx = np.searchsorted(edges, p.astype(np.float64), side="right") - 1
    np.clip(idx, 0, n_real - 1, out=idx)
    if edges.size == 1:  # all values equal under the quantile strategy
        edges = np.array([edges[0], edges[0]])
    return idx.astype(np.int64, copy=False), edges


def calibration_bins(
    p: Any,
    y: Any,
    n_bins: int = 10,
    strategy: str = "quantile",
    extra: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Reliability table: predicted vs observed positive rate per bin of ``p``.

    ``strategy="quantile"`` uses quantile edges of ``p`` (tied edges merged, so fewer bins may
    result); ``"uniform"`` uses ``n_bins`` equal-width bins over [0, 1]. Bin ``i`` holds
    ``lo <= p < hi`` (last bin closed). Empty bins are omitted. Each bin is
    ``{"lo", "hi", "n", "mean_pred", "observed"}`` with plain Python numbers; ``extra`` maps a key
    to another per-row array whose per-bin mean is added under that key (e.g. the uncorrected
    prediction).
    """
    p_np = to_numpy(p)
    y_np = to_numpy(y)
    _check_same_length(p_np, y_np)
    idx, edges = bin_index(p_np, n_bins, strategy)
    if idx.size == 0:
        return []
    n_real = edges.size - 1
    counts = np.bincount(idx, minlength=n_real)
    sum_p = np.bincount(idx, weights=p_np.astype(np.float64), minlength=n_real)
    sum_y = np.bincount(idx, weights=y_np.astype(np.float64), minlength=n_real)
    extra_sums: dict[str, np.ndarray] = {}
    for key, values in (extra or {}).items():
        v = to_numpy(values)
        _check_same_length(p_np, v)
        extra_sums[key] = np.bincount(idx, weights=v.astype(np.float64), minlength=n_real)
    bins: list[dict[str, Any]] = []
    for i in range(n_real):
        n = int(counts[i])
        if n == 0:
            continue
        row: dict[str, Any] = {
            "lo": float(edges[i]),
            "hi": float(edges[i + 1]),
            "n": n,
            "mean_pred": float(sum_p[i] / n),
            "observed": float(sum_y[i] / n),
        }
        for key, sums in extra_sums.items():
            row[key] = float(sums[i] / n)
        bins.append(row)
    return bins


# Rows per block of the Platt fit: a block's float64 temporaries stay in the CPU caches, and
# the blocks (fixed by size, so the sums do not depend on the thread count) run on threads.
_PLATT_BLOCK = 1 << 18
_PLATT_THREADS = min(os.cpu_count() or 1, 16)


def _platt_block(z: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    """Log loss and its derivative sums at ``t = a * z + b`` over one block of rows: float64
    ``[loss, sum(r z), sum(r), sum(w z^2), sum(w z), sum(w)]`` with ``r = q - y`` and
    ``w = q (1 - q)``, ``q = sigmoid(t)``. One ``exp(-|t|)`` gives both the stable softplus of
    the loss and the sigmoid."""
    t = a * z + b
    e = np.exp(-np.abs(t))
    loss = np.sum(np.maximum(t, 0.0) + np.log1p(e) - y * t)
    q = np.where(t >= 0.0, 1.0, e) / (1.0 + e)
    r = q - y
    w = np.maximum(q * (1.0 - q), 1e-12)
    wz = w * z
    return np.array([loss, r @ z, r.sum(), wz @ z, wz.sum(), w.sum()])


def _platt_sums(blocks, pool: ThreadPoolExecutor, a: float, b: float) -> np.ndarray:
    """:func:`_platt_block` summed over the blocks, in block order."""
    return np.sum(list(pool.map(lambda zy: _platt_block(*zy, a, b), blocks)), axis=0)


def fit_platt(p: Any, y: Any, *, max_iter: int = 50, tol: float = 1e-10) -> tuple[float, float]:
    """Platt scaling ``q = sigmoid(a * logit(p) + b)`` fitted by maximum likelihood.

    Newton-Raphson on the two parameters in float64 (the log loss is convex in (a, b)), starting
    at the identity (a, b) = (1, 0). Returns (1, 0) when the labels hold one class only (there is
    nothing to fit). Used to turn a model's outputs into probabilities on an unsampled,
    unweighted split (the validation split): ``a > 0`` keeps every ranking. Each trial point is
    one pass over the rows, in blocks on threads (NumPy releases the GIL), which yields its
    loss and, once accepted, the next Newton step's gradient and Hessian.
    """
    p = to_numpy(p).astype(np.float64).reshape(-1)
    y = to_numpy(y).astype(np.float64).reshape(-1)
    _check_same_length(p, y)
    n_pos = float(y.sum())
    if p.size == 0 or n_pos == 0.0 or n_pos == float(y.size):
        return 1.0, 0.0
    p = np.clip(p, 1e-12, 1.0 - 1e-12)
    z = np.log(p) - np.log1p(-p)
    blocks = [
        (z[i : i + _PLATT_BLOCK], y[i : i + _PLATT_BLOCK]) for i in range(0, z.size, _PLATT_BLOCK)
    ]
    a, b = 1.0, 0.0
    with ThreadPoolExecutor(min(_PLATT_THREADS, len(blocks))) as pool:
        sums = _platt_sums(blocks, pool, a, b)
        for _ in range(max_iter):
            loss = sums[0]
            g = sums[1:3]
            h = np.array([[sums[3], sums[4]], [sums[4], sums[5]]])
            h[0, 0] += 1e-9  # a constant score column makes the Hessian singular
            step = np.linalg.solve(h, g)
            # Backtracking: a Newton step that does not lower the loss is halved.
            t = 1.0
            while t > 1e-6:
                na, nb = a - t * float(step[0]), b - t * float(step[1])
                sums = _platt_sums(blocks, pool, na, nb)
                if sums[0] < loss:
                    break
                t *= 0.5
            if t <= 1e-6:
                break
            a, b = na, nb
            if loss - sums[0] <= tol * max(1.0, abs(loss)):
                break
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0.0:
        # A score that does not rank positives higher (or no usable fit): keep the outputs.
        return 1.0, 0.0
    return a, b


def apply_platt(p: Any, params: tuple[float, float]) -> np.ndarray:
    """``sigmoid(a * logit(p) + b)`` in float64 (see :func:`fit_platt`)."""
    a, b = params
    p = np.clip(to_numpy(p).astype(np.float64), 1e-12, 1.0 - 1e-12)
    t = a * (np.log(p) - np.log1p(-p)) + b
    return 1.0 / (1.0 + np.exp(-t))


def calibrated(
    p_ctr: Any,
    p_cvr: Any,
    *,
    keep_prob: float,
    ctr_pos_weight: float = 1.0,
    calibration: Mapping[str, Any] | None = None,
) -> tuple[Any, Any]:
    """The heads' outputs as probabilities on the unsampled population: ``(p_ctr, p_cvr)``.

    With ``calibration`` (``{"ctr": (a, b), "cvr": (a, b)}``, see :func:`fit_platt`) both go
    through their Platt scaling; without it CTR's odds are multiplied by
    ``keep_prob / ctr_pos_weight`` (:func:`rescale_odds`) and CVR is returned as it is.
    """
    if calibration is not None:
        return apply_platt(p_ctr, calibration["ctr"]), apply_platt(p_cvr, calibration["cvr"])
    return rescale_odds(p_ctr, float(keep_prob) / float(ctr_pos_weight)), p_cvr
