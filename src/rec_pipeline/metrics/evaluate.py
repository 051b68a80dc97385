"""The validation / evaluation metric dictionary (docs/model.md, Metrics), computed on host NumPy arrays.

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

Probabilities (:func:`probabilities`, float64). With ``calibration`` (Platt parameters fitted on
the unsampled validation split, the default of training) the CTR and CVR outputs are mapped
through them and CTCVR is their product: this undoes negative sampling and every loss weight at
once. Without it, the CTR odds are multiplied by ``keep_prob / ctr_pos_weight`` (the
negative-sampling correction and the CTR loss's pos_weight) and CVR is kept as it is
(``calibration_method`` says which). ``logloss`` and the calibration ``mean_pred`` use the
corrected probability, ``*_uncorrected`` the raw one. Every AUC ranks the model's own outputs
(docs/model.md, Metrics): the CTCVR AUC ranks ``p_ctr * p_cvr`` as the heads output them (in their dtype), so
neither the corrections nor ``evaluation.correct_pos_weight`` can change an AUC or which
checkpoint is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arrays import to_numpy
from .auc import AucResult, roc_auc
from .calibration import calibrated, calibration_bins, correct_negative_sampling, logloss

__all__ = [
    "TASKS",
    "Probabilities",
    "compute_metrics",
    "flat_metrics",
    "metrics_of",
    "primary_auc",
    "probabilities",
]

TASKS = ("ctr", "cvr", "ctcvr")
#: Weights of the ESMM primary metric: auc_ctcvr + 0.2 * auc_ctr + 0.2 * auc_cvr.
ESMM_PRIMARY_WEIGHTS = {"ctcvr": 1.0, "ctr": 0.2, "cvr": 0.2}


def primary_auc(
    auc_ctr: float | None, auc_cvr: float | None, auc_ctcvr: float | None, *, esmm: bool
) -> tuple[float | None, str | None]:
    """``auc_primary`` and the reason it is ``None`` (docs/model.md, Metrics).

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


@dataclass(frozen=True)
class Probabilities:
    """Per-row probabilities ``[n]``: the heads' outputs and the calibrated ones.

    ``ctr`` / ``cvr`` are the heads' sigmoid outputs in the model's dtype (what every AUC ranks);
    ``ctr_cal`` / ``cvr_cal`` are float64 probabilities on the unsampled population (what log
    loss, calibration bins and saved predictions use). CTCVR is the product of each pair.
    """

    ctr: np.ndarray
    cvr: np.ndarray
    ctr_cal: np.ndarray
    cvr_cal: np.ndarray
    method: str  # "platt" | "odds"

    @property
    def ctcvr(self) -> np.ndarray:
        return self.ctr * self.cvr

    @property
    def ctcvr_cal(self) -> np.ndarray:
        return self.ctr_cal * self.cvr_cal


def probabilities(
    p_ctr: Any,
    p_cvr: Any,
    *,
    keep_prob: float = 1.0,
    ctr_pos_weight: float = 1.0,
    calibration: Mapping[str, Any] | None = None,
) -> Probabilities:
    """The one calibration step: heads' outputs -> :class:`Probabilities` (see the module doc)."""
    if float(ctr_pos_weight) <= 0:
        raise ValueError(f"ctr_pos_weight must be > 0, got {ctr_pos_weight!r}")
    correct_negative_sampling(0.5, keep_prob)  # validates keep_prob
    ctr, cvr = _as_float(to_numpy(p_ctr)), _as_float(to_numpy(p_cvr))
    ctr_cal, cvr_cal = calibrated(
        ctr.astype(np.float64),
        cvr.astype(np.float64),
        keep_prob=keep_prob,
        ctr_pos_weight=ctr_pos_weight,
        calibration=calibration,
    )
    method = "platt" if calibration is not None else "odds"
    return Probabilities(ctr, cvr, ctr_cal, cvr_cal, method)


def _as_float(x: np.ndarray) -> np.ndarray:
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def _task_block(
    scores: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    n_bins: int,
    strategy: str,
    eps: float,
) -> dict[str, Any]:
    """AUC of the model's own ``scores``; log loss and calibration of the calibrated ``probs``
    (with the raw scores as the ``*_uncorrected`` values); the oracle's keys are left empty for
    :func:`_add_oracle`."""
    res: AucResult = roc_auc(scores, labels)
    block: dict[str, Any] = {
        "auc": res.value,
        "auc_reason": res.reason,
        "n": res.n,
        "n_pos": res.n_pos,
        "pos_rate": (res.n_pos / res.n) if res.n else None,
        "mean_pred": float(probs.mean(dtype=np.float64)) if probs.size else None,
        "mean_pred_uncorrected": float(scores.mean(dtype=np.float64)) if scores.size else None,
        "logloss": logloss(probs, labels, eps=eps),
        "logloss_uncorrected": logloss(scores, labels, eps=eps),
        "calibration": calibration_bins(
            probs, labels, n_bins=n_bins, strategy=strategy, extra={"mean_pred_uncorrected": scores}
        ),
        "oracle_auc": None,
        "oracle_auc_reason": None,
        "oracle_gap": None,
    }
    return block


def _add_oracle(block: dict[str, Any], oracle: AucResult) -> None:
    """The oracle's AUC (the true probabilities ranked) and its gap to the model's."""
    block["oracle_auc"] = oracle.value
    block["oracle_auc_reason"] = oracle.reason
    if oracle.value is not None and block["auc"] is not None:
        block["oracle_gap"] = oracle.value - block["auc"]


def _column(x: Any, n: int, name: str) -> np.ndarray:
    a = to_numpy(x)
    if a.size != n:
        raise ValueError(f"{name} has {a.size} rows, click has {n}")
    return a


def _truth_columns(truth: Mapping[str, Any] | None, n: int) -> tuple[Any, Any]:
    """Oracle ``(p_ctr, p_cvr)`` float arrays ``[n]``, or ``(None, None)`` without truth."""
    if truth is None:
        return None, None
    if "p_ctr" not in truth or "p_cvr" not in truth:
        raise ValueError("truth must contain 'p_ctr' and 'p_cvr'")
    return (
        _as_float(_column(truth["p_ctr"], n, "truth p_ctr")),
        _as_float(_column(truth["p_cvr"], n, "truth p_cvr")),
    )


def metrics_of(
    click: Any,
    conversion: Any,
    probs: Probabilities,
    *,
    esmm: bool,
    keep_prob: float = 1.0,
    ctr_pos_weight: float = 1.0,
    n_bins: int = 10,
    truth: Mapping[str, Any] | None = None,
    calibration_strategy: str = "quantile",
    eps: float = 1e-7,
) -> dict[str, Any]:
    """The metric dict of already calibrated :class:`Probabilities` (see :func:`compute_metrics`;
    ``keep_prob`` and ``ctr_pos_weight`` are only recorded here)."""
    click = to_numpy(click)
    n = int(click.size)
    conversion = _column(conversion, n, "conversion")
    for name, arr in (("p_ctr", probs.ctr), ("p_cvr", probs.cvr)):
        _column(arr, n, name)
    true_ctr, true_cvr = _truth_columns(truth, n)
    clicked = click == 1
    opts = {"n_bins": n_bins, "strategy": calibration_strategy, "eps": eps}
    # Per task: (the model's scores, the calibrated probabilities, the labels).
    blocks = {
        "ctr": (probs.ctr, probs.ctr_cal, click),
        "cvr": (probs.cvr[clicked], probs.cvr_cal[clicked], conversion[clicked]),
        "ctcvr": (probs.ctcvr, probs.ctcvr_cal, conversion),
    }
    oracle_scores = {}
    if true_ctr is not None:
        oracle_scores = {"ctr": true_ctr, "cvr": true_cvr[clicked], "ctcvr": true_ctr * true_cvr}
    # One thread per task and one per oracle AUC: the sorts, searches and ufuncs release the
    # GIL, so on tens of millions of rows they run side by side (each computed as alone).
    with ThreadPoolExecutor(2 * len(blocks)) as pool:
        futures = {t: pool.submit(_task_block, *block, **opts) for t, block in blocks.items()}
        oracles = {
            t: pool.submit(roc_auc, scores, blocks[t][2]) for t, scores in oracle_scores.items()
        }
    tasks = {t: f.result() for t, f in futures.items()}
    for t, f in oracles.items():
        _add_oracle(tasks[t], f.result())
    primary, reason = primary_auc(*(tasks[t]["auc"] for t in TASKS), esmm=esmm)
    return {
        "n_rows": n,
        "n_clicks": int(np.count_nonzero(clicked)),
        "n_conversions": int(np.count_nonzero(conversion == 1)),
        "esmm": bool(esmm),
        "keep_prob": float(keep_prob),
        "ctr_pos_weight": float(ctr_pos_weight),
        "calibration_method": probs.method,
        "auc_primary": primary,
        "auc_primary_reason": reason,
        "tasks": tasks,
    }


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

    click, conversion: binary labels per row. p_ctr, p_cvr: the heads' probabilities per row
    (``p_cvr`` = P(conversion | click)). All ``[n]``, array-likes (tensors are copied to the host).
    esmm: selects the primary-metric formula. keep_prob: probability with which training
    negatives were kept (1 = no sampling). ctr_pos_weight: the CTR loss's positive weight at the
    evaluated checkpoint (a weighted BCE multiplies the learnt odds by it, so the odds correction
    divides it back out; 1 = only the sampling correction). calibration: optional
    ``{"ctr": (a, b), "cvr": (a, b)}`` Platt parameters fitted on an unsampled split
    (:func:`~rec_pipeline.metrics.calibration.fit_platt`), which replace the odds correction.
    truth: optional ``{"p_ctr": ..., "p_cvr": ...}`` true probabilities aligned with the rows;
    adds ``oracle_auc`` and ``oracle_gap = oracle_auc - auc`` per task. n_bins,
    calibration_strategy (``"quantile"`` | ``"uniform"``): calibration bins of the calibrated
    probability. eps: clipping of probabilities inside the log loss.
    """
    n = int(to_numpy(click).size)
    p_ctr, p_cvr = _column(p_ctr, n, "p_ctr"), _column(p_cvr, n, "p_cvr")
    _column(conversion, n, "conversion")
    probs = probabilities(
        p_ctr, p_cvr, keep_prob=keep_prob, ctr_pos_weight=ctr_pos_weight, calibration=calibration
    )
    return metrics_of(
        click,
        conversion,
        probs,
        esmm=esmm,
        keep_prob=keep_prob,
        ctr_pos_weight=ctr_pos_weight,
        n_bins=n_bins,
        truth=truth,
        calibration_strategy=calibration_strategy,
        eps=eps,
    )


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
