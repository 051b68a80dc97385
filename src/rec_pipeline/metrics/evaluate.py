"""The validation / evaluation metric dictionary (SPEC §6).

``compute_metrics`` returns a JSON-serialisable dict (plain ``float`` / ``int`` / ``None``)::

    {"n_rows": int,
     "esmm": bool, "keep_prob": float,
     "auc_primary": float | None, "auc_primary_reason": str | None,
     "tasks": {"ctr": {...}, "cvr": {...}, "ctcvr": {...}}}

Per task: ``auc``, ``auc_reason``, ``n``, ``n_pos``, ``logloss``, ``logloss_uncorrected``,
``calibration`` (bins with ``mean_pred``, ``mean_pred_uncorrected`` and ``observed``),
``oracle_auc`` and ``oracle_gap``.

* ``ctr``: ``p_ctr`` vs click over all rows.
* ``cvr``: ``p_cvr`` vs conversion over the clicked rows only.
* ``ctcvr``: ``p_ctr * p_cvr`` vs conversion over all rows.

Probabilities. With ``calibration`` (Platt parameters fitted on the unsampled validation split,
the default of training) the CTR and CVR outputs are mapped through them and CTCVR is their
product: this undoes negative sampling and every loss weight at once. Without it, when the
training data had its negatives down-sampled (``keep_prob < 1``) the CTR probability is
corrected with :func:`correct_negative_sampling` (and for the CTR loss's pos_weight, see
``ctr_pos_weight``) and the CTCVR probability is the corrected CTR
probability times ``p_cvr`` (``calibration_method`` says which). ``logloss`` and the calibration ``mean_pred`` use the corrected
probability, ``*_uncorrected`` the raw one. Every AUC ranks the
model's own outputs (SPEC §6): the CTCVR AUC ranks ``p_ctr * p_cvr`` as the heads output them, so
neither the corrections nor ``evaluation.correct_pos_weight`` can change an AUC or which
checkpoint is kept.

AUCs run on the device of torch inputs; the rest is computed on the host in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .auc import AucResult, roc_auc
from .calibration import (
    calibrated,
    calibration_bins,
    correct_negative_sampling,
    logloss,
    to_numpy,
)

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

__all__ = ["TASKS", "compute_metrics", "flat_metrics", "primary_auc"]

TASKS = ("ctr", "cvr", "ctcvr")
#: Weights of the ESMM primary metric: auc_ctcvr + 0.2 * auc_ctr + 0.2 * auc_cvr.
ESMM_PRIMARY_WEIGHTS = {"ctcvr": 1.0, "ctr": 0.2, "cvr": 0.2}


def _is_tensor(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _flat(x: Any) -> Any:
    """Flat 1-D array; torch tensors stay tensors (and on their device)."""
    if _is_tensor(x):
        return x.detach().reshape(-1)
    return np.asarray(x).reshape(-1)


def _length(x: Any) -> int:
    return int(x.numel()) if _is_tensor(x) else int(x.size)


def _as_float(x: Any) -> Any:
    if _is_tensor(x):
        return x if x.is_floating_point() and x.dtype != torch.bfloat16 else x.float()
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def _align(ref: Any, x: Any) -> Any:
    """Bring ``x`` to the array kind/device of ``ref`` (torch device or NumPy)."""
    if _is_tensor(ref):
        if _is_tensor(x):
            return x.to(ref.device)
        return torch.as_tensor(np.asarray(x), device=ref.device)
    return to_numpy(x)


def _mask(x: Any, m: Any) -> Any:
    return x[m]


def _is_one(y: Any) -> Any:
    return y.bool() if _is_tensor(y) and y.dtype == torch.bool else (y == 1)


def _sum_int(x: Any) -> int:
    if _is_tensor(x):
        return int(x.sum(dtype=torch.int64))
    return int(np.count_nonzero(x))


def primary_auc(
    auc_ctr: float | None, auc_cvr: float | None, auc_ctcvr: float | None, *, esmm: bool
) -> tuple[float | None, str | None]:
    """``auc_primary`` and the reason it is ``None`` (SPEC §6).

    ESMM: ``auc_ctcvr + 0.2 * auc_ctr + 0.2 * auc_cvr``; otherwise ``(auc_ctr + auc_cvr) / 2``.
    """
    parts = {"ctr": auc_ctr, "cvr": auc_cvr}
    if esmm:
        parts["ctcvr"] = auc_ctcvr
    missing = [k for k, v in parts.items() if v is None]
    if missing:
        return None, "undefined " + ", ".join(f"auc_{k}" for k in missing)
    if esmm:
        return float(sum(ESMM_PRIMARY_WEIGHTS[k] * float(v) for k, v in parts.items())), None
    return (float(auc_ctr) + float(auc_cvr)) / 2.0, None


def _task_block(
    scores: Any,
    labels: Any,
    scores_uncorrected: Any | None,
    oracle_scores: Any | None,
    *,
    n_bins: int,
    strategy: str,
    eps: float,
) -> dict[str, Any]:
    """AUC of the model's own output (``scores_uncorrected`` when given), probability metrics
    (log loss, calibration) of the corrected ``scores``."""
    res: AucResult = roc_auc(scores if scores_uncorrected is None else scores_uncorrected, labels)
    p = to_numpy(scores)
    y = to_numpy(labels)
    p_raw = p if scores_uncorrected is None else to_numpy(scores_uncorrected)
    block: dict[str, Any] = {
        "auc": res.value,
        "auc_reason": res.reason,
        "n": res.n,
        "n_pos": res.n_pos,
        "pos_rate": (res.n_pos / res.n) if res.n else None,
        "mean_pred": float(p.mean(dtype=np.float64)) if p.size else None,
        "mean_pred_uncorrected": float(p_raw.mean(dtype=np.float64)) if p_raw.size else None,
        "logloss": logloss(p, y, eps=eps),
        "logloss_uncorrected": logloss(p_raw, y, eps=eps),
        "calibration": calibration_bins(
            p, y, n_bins=n_bins, strategy=strategy, extra={"mean_pred_uncorrected": p_raw}
        ),
        "oracle_auc": None,
        "oracle_auc_reason": None,
        "oracle_gap": None,
    }
    if oracle_scores is not None:
        oracle = roc_auc(oracle_scores, labels)
        block["oracle_auc"] = oracle.value
        block["oracle_auc_reason"] = oracle.reason
        if oracle.value is not None and res.value is not None:
            block["oracle_gap"] = oracle.value - res.value
    return block


def compute_metrics(
    click: Any,
    conversion: Any,
    p_ctr: Any,
    p_cvr: Any,
    *,
    esmm: bool,
    keep_prob: float = 1.0,
    ctr_pos_weight: float = 1.0,
    n_bins: int = 10,
    truth: Mapping[str, Any] | None = None,
    calibration: Mapping[str, Any] | None = None,
    calibration_strategy: str = "quantile",
    eps: float = 1e-7,
) -> dict[str, Any]:
    """Evaluation / validation metrics of a CTR-CVR model (see the module docstring for the dict).

    Parameters
    ----------
    click, conversion:
        Binary labels per row (NumPy or torch).
    p_ctr, p_cvr:
        Predicted probabilities per row as output by the model (``p_ctr`` before the
        negative-sampling correction; ``p_cvr`` = P(conversion | click)).
    esmm:
        Selects the primary-metric formula.
    keep_prob:
        Probability with which training negatives (click = 0) were kept; 1 = no sampling.
    ctr_pos_weight:
        The CTR loss's positive weight at the evaluated checkpoint. A weighted BCE multiplies the
        learnt odds by it, so the corrected CTR probability divides them back out (with
        ``keep_prob``: odds x keep_prob / ctr_pos_weight). 1 = only the sampling correction.
    n_bins, calibration_strategy:
        Calibration bins (``"quantile"`` or ``"uniform"``) of the corrected probability.
    calibration:
        Optional ``{"ctr": (a, b), "cvr": (a, b)}`` Platt parameters fitted on an unsampled
        split (:func:`~rec_pipeline.metrics.calibration.fit_platt`). When given they replace the
        odds correction: the corrected probabilities are ``sigmoid(a * logit(p) + b)`` for CTR
        and CVR, and CTCVR is their product.
    truth:
        Optional ``{"p_ctr": ..., "p_cvr": ...}`` true probabilities aligned with the rows;
        adds ``oracle_auc`` and ``oracle_gap = oracle_auc - auc`` per task.
    eps:
        Clipping of probabilities inside the log loss.
    """
    click = _flat(click)
    n = _length(click)
    conversion = _align(click, _flat(conversion))
    p_ctr_raw = _as_float(_align(click, _flat(p_ctr)))
    p_cvr = _as_float(_align(click, _flat(p_cvr)))
    for name, arr in (("conversion", conversion), ("p_ctr", p_ctr_raw), ("p_cvr", p_cvr)):
        if _length(arr) != n:
            raise ValueError(f"{name} has {_length(arr)} rows, click has {n}")

    if float(ctr_pos_weight) <= 0:
        raise ValueError(f"ctr_pos_weight must be > 0, got {ctr_pos_weight!r}")
    correct_negative_sampling(0.5, keep_prob)  # validates keep_prob
    odds_factor = float(keep_prob) / float(ctr_pos_weight)
    p_ctcvr_raw = p_ctr_raw * p_cvr
    p_ctr_corr, p_cvr_corr = calibrated(
        p_ctr_raw,
        p_cvr,
        keep_prob=keep_prob,
        ctr_pos_weight=ctr_pos_weight,
        calibration=calibration,
    )
    p_ctcvr_corr = p_ctr_corr * p_cvr_corr
    corrected = calibration is not None or odds_factor != 1.0

    true_ctr = true_cvr = None
    if truth is not None:
        if "p_ctr" not in truth or "p_cvr" not in truth:
            raise ValueError("truth must contain 'p_ctr' and 'p_cvr'")
        true_ctr = _as_float(_align(click, _flat(truth["p_ctr"])))
        true_cvr = _as_float(_align(click, _flat(truth["p_cvr"])))
        for name, arr in (("truth p_ctr", true_ctr), ("truth p_cvr", true_cvr)):
            if _length(arr) != n:
                raise ValueError(f"{name} has {_length(arr)} rows, click has {n}")

    clicked = _is_one(click)
    opts = {"n_bins": n_bins, "strategy": calibration_strategy, "eps": eps}
    tasks = {
        "ctr": _task_block(
            p_ctr_corr,
            click,
            p_ctr_raw if corrected else None,
            true_ctr,
            **opts,
        ),
        "cvr": _task_block(
            _mask(p_cvr, clicked) if calibration is None else p_cvr_corr[to_numpy(clicked)],
            _mask(conversion, clicked),
            None if calibration is None else _mask(p_cvr, clicked),
            None if true_cvr is None else _mask(true_cvr, clicked),
            **opts,
        ),
        "ctcvr": _task_block(
            p_ctcvr_corr,
            conversion,
            p_ctcvr_raw if corrected else None,
            None if true_ctr is None else true_ctr * true_cvr,
            **opts,
        ),
    }
    primary, reason = primary_auc(
        tasks["ctr"]["auc"], tasks["cvr"]["auc"], tasks["ctcvr"]["auc"], esmm=esmm
    )
    return {
        "n_rows": n,
        "n_clicks": _sum_int(clicked),
        "n_conversions": _sum_int(_is_one(conversion)),
        "esmm": bool(esmm),
        "keep_prob": float(keep_prob),
        "ctr_pos_weight": float(ctr_pos_weight),
        "calibration_method": "platt" if calibration is not None else "odds",
        "auc_primary": primary,
        "auc_primary_reason": reason,
        "tasks": tasks,
    }


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


#: Per-task keys copied by :func:`flat_metrics`, named ``{key}_{task}``.
_FLAT_TASK_KEYS = (
    "auc",
    "logloss",
    "logloss_uncorrected",
    "oracle_auc",
    "oracle_gap",
    "n",
    "n_pos",
    "pos_rate",
    "mean_pred",
)


def flat_metrics(d: Mapping[str, Any]) -> dict[str, float]:
    """Flatten a :func:`compute_metrics` dict for history logging.

    Gives ``auc_ctr``, ``auc_cvr``, ``auc_ctcvr``, ``auc_primary``, ``logloss_ctr``,
    ``logloss_uncorrected_ctr``, ``oracle_auc_ctr``, ``oracle_gap_ctr``, ``n_ctr``, ``n_pos_ctr``,
    ... and ``n_rows``. Undefined values (``None``) and non-finite numbers are left out.
    An already flat dict (no ``"tasks"`` key) has its numeric entries returned as floats.
    """
    out: dict[str, float] = {}

    def put(key: str, v: Any) -> None:
        if _is_number(v) and math.isfinite(float(v)):
            out[key] = float(v)

    if "tasks" not in d:
        for key, v in d.items():
            put(str(key), v)
        return out
    for key in ("auc_primary", "n_rows", "n_clicks", "n_conversions"):
        put(key, d.get(key))
    for task, block in (d.get("tasks") or {}).items():
        for key in _FLAT_TASK_KEYS:
            put(f"{key}_{task}", block.get(key))
    return out
