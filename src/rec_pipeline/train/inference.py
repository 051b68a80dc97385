"""The forward pass's autocast context, and the keyword form of evaluation the nodes call.

Evaluation itself lives in :mod:`rec_pipeline.train.evaluation`; :func:`evaluate_split` maps
its keyword arguments onto :func:`~rec_pipeline.train.evaluation.evaluate_model`.
"""

from __future__ import annotations

import contextlib

import pandas as pd
import torch

from rec_pipeline.data.batches import SplitData
from rec_pipeline.train.evaluation import (
    Correction,
    evaluate_model,
    fit_calibration,
    predict,
    summarise,
)

__all__ = ["autocast", "evaluate_split", "fit_calibration", "predict", "summarise"]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast on CUDA when AMP is on; a no-op context otherwise."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


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
    """``(metrics, predictions or None)`` of :func:`~rec_pipeline.train.evaluation.evaluate_model`.

    Evaluation always runs in fp32 so that one checkpoint gives one set of numbers: an
    ``amp_dtype`` other than None is refused.
    """
    if amp_dtype is not None:
        raise ValueError("evaluation runs in fp32: amp_dtype must be None")
    result = evaluate_model(
        model,
        data,
        batch_size=batch_size,
        esmm=esmm,
        correction=Correction(keep_prob, ctr_pos_weight, calibration),
        n_bins=n_bins,
        max_batches=max_batches,
        truth=truth,
        with_predictions=with_predictions,
    )
    return result.metrics, result.predictions
