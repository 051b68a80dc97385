"""Exact ROC AUC and downsampled ROC curves, on host NumPy arrays.

The AUC is the Mann-Whitney statistic with ties counted as one half::

    AUC = (#{(pos, neg): s_pos > s_neg} + 0.5 * #{(pos, neg): s_pos == s_neg}) / (P * N)

which is exactly the trapezoidal area under the ROC curve taken over distinct thresholds, i.e. what
``sklearn.metrics.roc_auc_score`` computes.

Algorithm (one pass of value sorts, no argsort and no gather of labels):

1. split the scores by label and sort the negatives and the positives separately;
2. for every positive score ``s``: ``lo = #neg < s`` and ``hi = #neg <= s`` by binary search in the
   sorted negatives (the positives are sorted too, so the searches walk memory forwards);
3. ``2U = sum(lo + hi)`` is an exact int64 integer and ``AUC = 2U / (2 P N)`` in float64.

Sorting values only is several times faster than an argsort (NumPy uses SIMD sorts for plain
values). All counting is int64, so the result is exact up to the final float64 division, also for
tens of millions of rows. Inputs go through :func:`~rec_pipeline.metrics.arrays.to_numpy`:
torch tensors are copied to the host once, everything is computed on NumPy arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .arrays import to_numpy

__all__ = ["AucResult", "auc_value", "roc_auc", "roc_curve_points"]


@dataclass(frozen=True)
class AucResult:
    """Outcome of an AUC computation.

    ``value`` is ``None`` when the AUC is undefined (no rows, one class only, NaN scores); ``reason``
    then says why. ``n`` and ``n_pos`` are the number of rows and of positive rows.
    """

    value: float | None
    reason: str | None
    n: int
    n_pos: int

    @property
    def n_neg(self) -> int:
        return self.n - self.n_pos

    @property
    def ok(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __float__(self) -> float:
        if self.value is None:
            raise ValueError(f"AUC is undefined: {self.reason}")
        return self.value


# --------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------


def _check_lengths(n_s: int, n_y: int) -> None:
    if n_s != n_y:
        raise ValueError(f"scores and labels differ in length: {n_s} != {n_y}")


def _positive_mask(y: np.ndarray) -> np.ndarray:
    if y.dtype == np.bool_:
        return y
    pos = y == 1
    if y.size and int(np.count_nonzero(pos)) + int(np.count_nonzero(y == 0)) != y.size:
        raise ValueError("labels must be binary (0/1 or bool)")
    return pos


def _undefined(n: int, n_pos: int, nan_count: int = 0) -> AucResult | None:
    if n == 0:
        return AucResult(None, "no rows", 0, 0)
    if nan_count:
        return AucResult(None, f"{nan_count} scores are NaN", n, n_pos)
    if n_pos == 0:
        return AucResult(None, f"only negative labels ({n} rows, no positive)", n, 0)
    if n_pos == n:
        return AucResult(None, f"only positive labels ({n} rows, no negative)", n, n_pos)
    return None


# --------------------------------------------------------------------------------------------------
# AUC
# --------------------------------------------------------------------------------------------------


def _exact_auc(s: np.ndarray, y: np.ndarray) -> AucResult:
    n = int(s.size)
    pos = _positive_mask(y)
    n_pos = int(np.count_nonzero(pos))
    nan_count = int(np.count_nonzero(np.isnan(s))) if s.dtype.kind in "fc" else 0
    if (bad := _undefined(n, n_pos, nan_count)) is not None:
        return bad
    if s.dtype.kind == "c":
        raise ValueError("complex scores are not supported")
    neg_sorted = np.sort(s[~pos])
    pos_sorted = np.sort(s[pos])
    lo = np.searchsorted(neg_sorted, pos_sorted, side="left")
    hi = np.searchsorted(neg_sorted, pos_sorted, side="right")
    twice_u = int(lo.sum(dtype=np.int64)) + int(hi.sum(dtype=np.int64))
    n_neg = n - n_pos
    return AucResult(twice_u / (2.0 * n_pos * n_neg), None, n, n_pos)


def roc_auc(scores: Any, labels: Any) -> AucResult:
    """Exact ROC AUC with ties counted one half (agrees with scikit-learn).

    Parameters
    ----------
    scores:
        1-D NumPy array / sequence / torch tensor of scores (any real dtype; bf16/fp16 are widened
        exactly to float32; a tensor is copied to the host).
    labels:
        Binary labels (bool or 0/1 of any dtype), same length.

    Returns
    -------
    AucResult
        ``value`` is ``None`` with a ``reason`` when the AUC is undefined (no rows, only one class,
        NaN scores). Non-binary labels or mismatched lengths raise ``ValueError``.
    """
    s, y = to_numpy(scores), to_numpy(labels)
    _check_lengths(int(s.size), int(y.size))
    return _exact_auc(s, y)


def auc_value(scores: Any, labels: Any) -> float | None:
    """Shortcut for ``roc_auc(scores, labels).value``."""
    return roc_auc(scores, labels).value


# --------------------------------------------------------------------------------------------------
# ROC curve for plotting
# --------------------------------------------------------------------------------------------------


def _sorted_by_class(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sorted negative and positive scores as float64 NumPy arrays."""
    s, y = to_numpy(scores), to_numpy(labels)
    _check_lengths(int(s.size), int(y.size))
    pos = _positive_mask(y)
    return np.sort(s[~pos]).astype(np.float64), np.sort(s[pos]).astype(np.float64)


def _quantile_values(sorted_values: np.ndarray, k: int) -> np.ndarray:
    if sorted_values.size == 0 or k <= 0:
        return sorted_values[:0]
    idx = np.unique(np.linspace(0, sorted_values.size - 1, num=k).round().astype(np.int64))
    return sorted_values[idx]


def roc_curve_points(
    scores: Any, labels: Any, max_points: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Downsampled ROC curve ``(fpr, tpr)`` for plotting, from (0, 0) to (1, 1).

    The thresholds are the distinct scores when there are few of them, otherwise evenly spaced
    quantiles of the negative scores and of the positive scores (half the budget each), so the
    points are dense along both axes even for a rare positive class. The (fpr, tpr) at each chosen
    threshold is exact; joining the points by straight lines reproduces the tie-aware ROC curve
    up to the downsampling. Returns two empty arrays when a class is missing or a score is NaN.
    At most ``max_points`` + 2 points are returned (float64 NumPy arrays, host memory).
    """
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    neg_sorted, pos_sorted = _sorted_by_class(scores, labels)
    n_neg, n_pos = neg_sorted.size, pos_sorted.size
    empty = np.zeros(0, dtype=np.float64)
    if n_neg == 0 or n_pos == 0:
        return empty, empty.copy()
    if np.isnan(neg_sorted[-1]) or np.isnan(pos_sorted[-1]):  # NaN sorts last
        return empty, empty.copy()

    candidates = None
    if n_neg + n_pos <= 4 * max_points:
        candidates = np.unique(np.concatenate([neg_sorted, pos_sorted]))
    if candidates is None or candidates.size > max_points:
        half = max_points // 2
        candidates = np.unique(
            np.concatenate(
                [
                    _quantile_values(neg_sorted, half),
                    _quantile_values(pos_sorted, max_points - half),
                ]
            )
        )
    # Predict positive when score >= threshold; thresholds descending gives increasing rates.
    thresholds = candidates[::-1]
    tp = n_pos - np.searchsorted(pos_sorted, thresholds, side="left")
    fp = n_neg - np.searchsorted(neg_sorted, thresholds, side="left")
    fpr = np.concatenate([[0.0], fp / n_neg, [1.0]])
    tpr = np.concatenate([[0.0], tp / n_pos, [1.0]])
    # Drop consecutive duplicate points (e.g. the added end point when already present).
    keep = np.ones(fpr.size, dtype=bool)
    keep[1:] = (np.diff(fpr) != 0) | (np.diff(tpr) != 0)
    return fpr[keep], tpr[keep]
