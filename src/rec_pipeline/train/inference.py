"""Batched prediction over a tensor-resident split, and the metrics of those predictions."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from rec_pipeline.data.batches import SplitData
from rec_pipeline.metrics.calibration import calibrated, fit_platt
from rec_pipeline.metrics.evaluate import compute_metrics


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast on CUDA when AMP is on; a no-op context otherwise."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    data: SplitData,
    batch_size: int,
    *,
    amp_dtype: torch.dtype | None = None,
    max_batches: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(p_ctr [n], p_cvr [n], n) float32 on the data's device, rows in split order.

    ``max_batches`` limits the rows to the first ``n = max_batches * batch_size``.
    """
    was_training = model.training
    model.eval()
    p_ctr, p_cvr = [], []
    try:
        for i, batch in enumerate(data.iter_batches(batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            with autocast(data.device, amp_dtype):
                out = model(batch)
            p_ctr.append(torch.sigmoid(out.logits["ctr"].float()))
            p_cvr.append(torch.sigmoid(out.logits["cvr"].float()))
    finally:
        model.train(was_training)
    if not p_ctr:
        empty = torch.empty(0, device=data.device)
        return empty, empty, 0
    ctr, cvr = torch.cat(p_ctr), torch.cat(p_cvr)
    return ctr, cvr, int(ctr.shape[0])


def align_truth(truth: pd.DataFrame | None, sample_id: np.ndarray) -> dict | None:
    """Truth probabilities (p_ctr, p_cvr) in the order of ``sample_id``; None when absent."""
    if truth is None or len(truth) == 0:
        return None
    ids = truth["sample_id"].to_numpy(np.int64)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    pos = np.searchsorted(ids, sample_id)
    pos = np.minimum(pos, len(ids) - 1)
    if not np.array_equal(ids[pos], sample_id):
        return None  # truth does not cover these rows (e.g. real data): no oracle
    return {
        "p_ctr": truth["p_ctr"].to_numpy(np.float64)[order][pos],
        "p_cvr": truth["p_cvr"].to_numpy(np.float64)[order][pos],
    }


def evaluate_split(
    model: torch.nn.Module,
    data: SplitData,
    *,
    batch_size: int,
    esmm: bool,
    keep_prob: float,
    n_bins: int,
    ctr_pos_weight: float = 1.0,
    amp_dtype: torch.dtype | None = None,
    max_batches: int | None = None,
    truth: pd.DataFrame | None = None,
    calibration: dict | None = None,
    with_predictions: bool = False,
) -> tuple[dict, pd.DataFrame | None]:
    """Metrics (SPEC §6) of the model on a split, and optionally the prediction table.

    ``calibration``: Platt parameters per task (a checkpoint's ``calibration``), which then make
    the saved probabilities; without them, the odds correction of ``keep_prob`` and
    ``ctr_pos_weight`` does (see :func:`~rec_pipeline.metrics.evaluate.compute_metrics`).
    """
    p_ctr, p_cvr, n = predict(model, data, batch_size, amp_dtype=amp_dtype, max_batches=max_batches)
    click, conversion = data.click[:n], data.conversion[:n]
    aligned = align_truth(truth, data.sample_id[:n]) if truth is not None else None
    metrics = compute_metrics(
        click,
        conversion,
        p_ctr,
        p_cvr,
        esmm=esmm,
        keep_prob=keep_prob,
        ctr_pos_weight=ctr_pos_weight,
        n_bins=n_bins,
        truth=aligned,
        calibration=calibration,
    )
    preds = None
    if with_predictions:
        # Probabilities on the unsampled population (the corrections of the metrics above).
        raw = p_ctr.double().cpu().numpy()
        cvr_raw = p_cvr.double().cpu().numpy()
        ctr, cvr = calibrated(
            raw,
            cvr_raw,
            keep_prob=keep_prob,
            ctr_pos_weight=ctr_pos_weight,
            calibration=calibration,
        )
        preds = pd.DataFrame(
            {
                "sample_id": data.sample_id[:n],
                "click": data.click_host[:n],
                "conversion": data.conversion_host[:n],
                "p_ctr": ctr,
                "p_cvr": cvr,
                "p_ctcvr": ctr * cvr,
                "p_ctr_uncorrected": raw,  # the heads' outputs as trained
                "p_cvr_uncorrected": cvr_raw,
            }
        )
    return metrics, preds


def fit_calibration(
    p_ctr: torch.Tensor, p_cvr: torch.Tensor, click: torch.Tensor, conversion: torch.Tensor
) -> dict[str, list[float]]:
    """Platt parameters ``{"ctr": [a, b], "cvr": [a, b]}`` from a model's outputs on an
    unsampled split: CTR on every row, CVR on the clicked rows."""
    clicked = click.bool()
    return {
        "ctr": list(fit_platt(p_ctr, click)),
        "cvr": list(fit_platt(p_cvr[clicked], conversion[clicked])),
    }


def summarise(metrics: Mapping) -> str:
    parts = []
    for k in ("auc_ctr", "auc_cvr", "auc_ctcvr", "auc_primary"):
        task = k.removeprefix("auc_")
        v = metrics.get("auc_primary") if task == "primary" else metrics["tasks"][task]["auc"]
        parts.append(f"{k}={v:.4f}" if v is not None else f"{k}=n/a")
    return " ".join(parts)
