"""Evaluation of a model on a loaded split: fp32 prediction, calibration, metrics, predictions.

:func:`evaluate_model` is the one path validation, auto-eval and the evaluation node share; the
predictions leave the device once (in :func:`predict`) and everything after runs on NumPy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from rec_pipeline.data.batches import SplitData
from rec_pipeline.metrics.calibration import fit_platt
from rec_pipeline.metrics.evaluate import Probabilities, metrics_of, probabilities

__all__ = [
    "PREDICTION_COLUMNS",
    "Correction",
    "Evaluation",
    "SplitOutputs",
    "align_truth",
    "evaluate_model",
    "fit_calibration",
    "predict",
    "summarise",
]


@dataclass(frozen=True)
class SplitOutputs:
    """The heads' probabilities and the labels of the first ``n`` rows of a split, on the host.

    ``p_ctr``, ``p_cvr``: ``[n]`` float32 sigmoid outputs; ``click``, ``conversion``: ``[n]``
    int8 labels; ``sample_id``: ``[n]`` int64; rows in split order.
    """

    p_ctr: np.ndarray
    p_cvr: np.ndarray
    click: np.ndarray
    conversion: np.ndarray
    sample_id: np.ndarray

    def __len__(self) -> int:
        return int(self.p_ctr.size)


@dataclass(frozen=True)
class Correction:
    """How the heads' outputs become probabilities on the unsampled population.

    ``calibration``: Platt parameters per task (a checkpoint's ``calibration``), which take
    precedence; without them the CTR odds are multiplied by ``keep_prob / ctr_pos_weight``.
    """

    keep_prob: float = 1.0
    ctr_pos_weight: float = 1.0
    calibration: Mapping[str, list[float]] | None = None


@dataclass
class Evaluation:
    """:func:`evaluate_model`'s result: the metric dict (docs/model.md, Metrics), the raw outputs, and the
    prediction table when asked for."""

    metrics: dict
    outputs: SplitOutputs
    predictions: pd.DataFrame | None = None


@torch.no_grad()
def predict(
    model: torch.nn.Module, data: SplitData, batch_size: int, *, max_batches: int | None = None
) -> SplitOutputs:
    """The model's outputs on ``data`` in fp32 (no autocast), copied to the host once.

    ``max_batches`` limits the rows to the first ``n = max_batches * batch_size``.
    """
    was_training = model.training
    model.eval()
    p_ctr, p_cvr = [], []
    try:
        for i, batch in enumerate(data.iter_batches(batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            out = model(batch)
            p_ctr.append(torch.sigmoid(out.logits["ctr"].float()))  # [B]
            p_cvr.append(torch.sigmoid(out.logits["cvr"].float()))  # [B]
    finally:
        model.train(was_training)
    empty = torch.empty(0, device=data.device)
    ctr = torch.cat(p_ctr) if p_ctr else empty
    cvr = torch.cat(p_cvr) if p_cvr else empty
    n = int(ctr.shape[0])
    return SplitOutputs(
        p_ctr=ctr.cpu().numpy(),
        p_cvr=cvr.cpu().numpy(),
        click=data.click_host[:n],
        conversion=data.conversion_host[:n],
        sample_id=data.sample_id[:n],
    )


def align_truth(truth: pd.DataFrame | None, sample_id: np.ndarray) -> dict | None:
    """Truth probabilities (p_ctr, p_cvr) in the order of ``sample_id``; None when absent."""
    if truth is None or len(truth) == 0:
        return None
    ids = truth["sample_id"].to_numpy(np.int64)
    columns = {c: truth[c].to_numpy(np.float64) for c in ("p_ctr", "p_cvr")}
    if np.array_equal(ids, sample_id):
        # Already in the split's order (the generator writes both in file order): one
        # comparison instead of a sort and a search over tens of millions of ids.
        return columns
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    pos = np.searchsorted(ids, sample_id)
    pos = np.minimum(pos, len(ids) - 1)
    if not np.array_equal(ids[pos], sample_id):
        return None  # truth does not cover these rows (e.g. real data): no oracle
    return {c: v[order][pos] for c, v in columns.items()}


def fit_calibration(outputs: SplitOutputs) -> dict[str, list[float]]:
    """Platt parameters ``{"ctr": [a, b], "cvr": [a, b]}`` from a model's outputs on an
    unsampled split: CTR on every row, CVR on the clicked rows."""
    clicked = outputs.click == 1
    return {
        "ctr": list(fit_platt(outputs.p_ctr, outputs.click)),
        "cvr": list(fit_platt(outputs.p_cvr[clicked], outputs.conversion[clicked])),
    }


# Columns of a prediction table (predictions_frame), also those of an empty one.
PREDICTION_COLUMNS = [
    "sample_id",
    "click",
    "conversion",
    "p_ctr",
    "p_cvr",
    "p_ctcvr",
    "p_ctr_uncorrected",
    "p_cvr_uncorrected",
]


def predictions_frame(outputs: SplitOutputs, probs: Probabilities) -> pd.DataFrame:
    """One row per sample: labels, calibrated probabilities and the heads' own outputs."""
    return pd.DataFrame(
        {
            "sample_id": outputs.sample_id,
            "click": outputs.click,
            "conversion": outputs.conversion,
            "p_ctr": probs.ctr_cal,
            "p_cvr": probs.cvr_cal,
            "p_ctcvr": probs.ctcvr_cal,
            "p_ctr_uncorrected": probs.ctr.astype(np.float64),  # the heads' outputs as trained
            "p_cvr_uncorrected": probs.cvr.astype(np.float64),
        }
    )


def evaluate_model(
    model: torch.nn.Module,
    data: SplitData,
    *,
    batch_size: int,
    esmm: bool,
    correction: Correction = Correction(),
    n_bins: int = 10,
    max_batches: int | None = None,
    truth: pd.DataFrame | None = None,
    with_predictions: bool = False,
) -> Evaluation:
    """Predict ``data`` in fp32, calibrate per ``correction``, compute the metrics (docs/model.md, Metrics).

    ``truth``: the planted truth table (``sample_id``, ``p_ctr``, ``p_cvr``), for oracle AUCs
    when it covers the rows. ``with_predictions`` adds the prediction table, made from the same
    calibrated probabilities as the metrics.
    """
    outputs = predict(model, data, batch_size, max_batches=max_batches)
    probs = probabilities(
        outputs.p_ctr,
        outputs.p_cvr,
        keep_prob=correction.keep_prob,
        ctr_pos_weight=correction.ctr_pos_weight,
        calibration=correction.calibration,
    )
    metrics = metrics_of(
        outputs.click,
        outputs.conversion,
        probs,
        esmm=esmm,
        keep_prob=correction.keep_prob,
        ctr_pos_weight=correction.ctr_pos_weight,
        n_bins=n_bins,
        truth=align_truth(truth, outputs.sample_id),
    )
    frame = predictions_frame(outputs, probs) if with_predictions else None
    return Evaluation(metrics=metrics, outputs=outputs, predictions=frame)


def summarise(metrics: Mapping) -> str:
    """One log line of a metric dict's AUCs."""
    parts = []
    for k in ("auc_ctr", "auc_cvr", "auc_ctcvr", "auc_primary"):
        task = k.removeprefix("auc_")
        v = metrics.get("auc_primary") if task == "primary" else metrics["tasks"][task]["auc"]
        parts.append(f"{k}={v:.4f}" if v is not None else f"{k}=n/a")
    return " ".join(parts)
