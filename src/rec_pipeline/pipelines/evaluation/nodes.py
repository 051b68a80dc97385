"""Evaluation node: a saved checkpoint on a chosen split, without retraining."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from rec_pipeline.config import load_config
from rec_pipeline.data.batches import load_splits
from rec_pipeline.data.raw import RawFiles
from rec_pipeline.data.shards import ShardSet
from rec_pipeline.train.inference import evaluate_split, summarise
from rec_pipeline.train.loop import (
    checkpoint_calibration,
    checkpoint_ctr_pos_weight,
    model_from_checkpoint,
    resolve_device,
)

log = logging.getLogger(__name__)


def evaluate_model(
    model_checkpoint: dict,
    encoded_train: ShardSet,
    encoded_valid: ShardSet,
    encoded_test: ShardSet,
    encoded_train_commons: ShardSet,
    encoded_test_commons: ShardSet,
    raw_aliccp: RawFiles,
    parameters: dict[str, Any],
) -> tuple[pd.DataFrame, dict]:
    """Predictions and metrics (SPEC §6) of ``evaluation.checkpoint`` on ``evaluation.split``."""
    cfg = load_config(parameters)
    ev = cfg.evaluation
    device = resolve_device(ev.device)
    # The checkpoint, not today's parameters, defines the model and the data layout it expects.
    metadata = model_checkpoint["metadata"]
    trained = load_config(model_checkpoint["config"])
    model = model_from_checkpoint(model_checkpoint, ev.checkpoint, device)
    samples = {"train": encoded_train, "valid": encoded_valid, "test": encoded_test}[ev.split]
    commons = encoded_test_commons if ev.split == "test" else encoded_train_commons
    data = load_splits(metadata, {ev.split: samples}, commons, device)[ev.split]
    metrics, preds = evaluate_split(
        model,
        data,
        batch_size=ev.batch_size,
        esmm=trained.use_esmm,
        keep_prob=float(metadata["neg_keep_prob_train"]),
        ctr_pos_weight=checkpoint_ctr_pos_weight(
            model_checkpoint, ev.checkpoint, ev.correct_pos_weight
        ),
        n_bins=ev.calibration_bins,
        # fp32 (no autocast), as validation and auto-eval: one checkpoint, one set of numbers.
        truth=raw_aliccp.load_truth(ev.split),
        calibration=checkpoint_calibration(model_checkpoint, ev.checkpoint, ev.calibration),
        with_predictions=True,
    )
    best = model_checkpoint.get(ev.checkpoint) or {}
    metrics.update(
        {
            "split": ev.split,
            "checkpoint": ev.checkpoint,
            "checkpoint_step": best.get("step"),
            "experiment": trained.experiment.name,
            "vocab_fingerprint": metadata.get("vocab_fingerprint"),
            "device": str(device),
        }
    )
    log.info("evaluation (%s, %s checkpoint): %s", ev.split, ev.checkpoint, summarise(metrics))
    return preds, metrics
