"""Evaluation nodes: a saved checkpoint on a chosen split, without retraining."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from rec_pipeline.config import load_config, load_section
from rec_pipeline.data.batches import load_splits
from rec_pipeline.data.metadata import DatasetMetadata
from rec_pipeline.data.shards import ShardSet
from rec_pipeline.train.inference import evaluate_split, summarise
from rec_pipeline.train.loop import (
    checkpoint_calibration,
    checkpoint_ctr_pos_weight,
    model_from_checkpoint,
    resolve_device,
)

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["sample_id", "click", "conversion", "p_ctr", "p_cvr", "p_ctcvr"]


def evaluate_checkpoint(
    checkpoint: dict,
    split: str,
    samples: ShardSet,
    commons: ShardSet,
    truth: pd.DataFrame,
    *,
    which: str,
    settings: Any,
    device: str,
    with_predictions: bool = True,
) -> tuple[pd.DataFrame | None, dict]:
    """Predictions and metrics (docs/model.md, Metrics) of the checkpoint's ``which`` weights
    (best or last) on one split. The checkpoint, not today's parameters, defines the model,
    its data layout and its calibration; ``settings`` is the ``evaluation`` section."""
    dev = resolve_device(device)
    metadata = DatasetMetadata.coerce(checkpoint["metadata"])
    trained = load_config(checkpoint["config"])
    data = load_splits(metadata, {split: samples}, commons, dev)[split]
    metrics, preds = evaluate_split(
        model_from_checkpoint(checkpoint, which, dev),
        data,
        batch_size=settings.batch_size,
        esmm=trained.use_esmm,
        keep_prob=metadata.neg_keep_prob_train,
        ctr_pos_weight=checkpoint_ctr_pos_weight(checkpoint, which, settings.correct_pos_weight),
        n_bins=settings.calibration_bins,
        truth=truth,
        calibration=checkpoint_calibration(checkpoint, which, settings.calibration),
        with_predictions=with_predictions,
    )
    metrics.update(
        {
            "split": split,
            "checkpoint": which,
            "checkpoint_step": (checkpoint.get(which) or {}).get("step"),
            "experiment": trained.experiment.name,
            "vocab_fingerprint": metadata.vocab_fingerprint,
            "device": str(dev),
        }
    )
    log.info("evaluation (%s, %s checkpoint): %s", split, which, summarise(metrics))
    return preds, metrics


def evaluate_model(
    model_checkpoint: dict,
    encoded_train: ShardSet,
    encoded_valid: ShardSet,
    encoded_test: ShardSet,
    encoded_train_commons: ShardSet,
    encoded_test_commons: ShardSet,
    planted_truth_train: pd.DataFrame,
    planted_truth_test: pd.DataFrame,
    evaluation: dict[str, Any],
) -> tuple[pd.DataFrame, dict]:
    """``evaluation.checkpoint`` on ``evaluation.split`` (fp32, as validation and auto-eval)."""
    ev = load_section("evaluation", evaluation)
    test = ev.split == "test"
    samples = {"train": encoded_train, "valid": encoded_valid, "test": encoded_test}[ev.split]
    return evaluate_checkpoint(
        model_checkpoint,
        ev.split,
        samples,
        encoded_test_commons if test else encoded_train_commons,
        planted_truth_test if test else planted_truth_train,
        which=ev.checkpoint,
        settings=ev,
        device=ev.device,
    )
