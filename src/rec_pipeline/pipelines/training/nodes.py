"""Training node: load the encoded splits onto the device, train, hand back the artefacts."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from rec_pipeline.config import load_config
from rec_pipeline.data.batches import load_splits
from rec_pipeline.data.raw import RawFiles
from rec_pipeline.data.shards import ShardSet
from rec_pipeline.datasets.atomic import load_torch
from rec_pipeline.datasets.training_state_dataset import TrainingStateStore
from rec_pipeline.train.inference import evaluate_split, summarise
from rec_pipeline.train.loop import (
    Trainer,
    checkpoint_calibration,
    checkpoint_ctr_pos_weight,
    model_from_checkpoint,
    resolve_device,
)

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["sample_id", "click", "conversion", "p_ctr", "p_cvr", "p_ctcvr"]


def train_model(
    encoded_train: ShardSet,
    encoded_valid: ShardSet,
    encoded_train_commons: ShardSet,
    encoded_test: ShardSet,
    encoded_test_commons: ShardSet,
    metadata: dict,
    raw_aliccp: RawFiles,
    training_state: TrainingStateStore,
    parameters: dict[str, Any],
) -> tuple[dict, pd.DataFrame, dict, pd.DataFrame]:
    """Train per ``parameters``; returns checkpoint, history, summary, auto-eval predictions."""
    cfg = load_config(parameters)
    device = resolve_device(cfg.runtime.device)
    splits = load_splits(
        metadata, {"train": encoded_train, "valid": encoded_valid}, encoded_train_commons, device
    )
    train, valid = splits["train"], splits["valid"]
    log.info("Loaded train (%d rows) and valid (%d rows) onto %s.", len(train), len(valid), device)
    resume = None
    if cfg.runtime.resume == "latest":
        resume = training_state.latest()
        if resume is None:
            log.warning("runtime.resume=latest: no training state yet, starting afresh.")
    elif cfg.runtime.resume_path:
        resume = load_torch(cfg.runtime.resume_path)
    result = Trainer(cfg, metadata, train, valid, resume=resume, state_store=training_state).fit()
    summary = dict(result.summary)
    preds = pd.DataFrame(columns=PREDICTION_COLUMNS)
    if cfg.runtime.auto_eval:
        split = cfg.runtime.auto_eval_split
        data = valid
        if split == "test":
            test = {"test": encoded_test}
            data = load_splits(metadata, test, encoded_test_commons, device)["test"]
        model = model_from_checkpoint(result.checkpoint, cfg.runtime.auto_eval_ckpt, device)
        metrics, p = evaluate_split(
            model,
            data,
            batch_size=cfg.evaluation.batch_size,
            esmm=cfg.use_esmm,
            keep_prob=float(metadata["neg_keep_prob_train"]),
            ctr_pos_weight=checkpoint_ctr_pos_weight(
                result.checkpoint, cfg.runtime.auto_eval_ckpt, cfg.evaluation.correct_pos_weight
            ),
            n_bins=cfg.evaluation.calibration_bins,
            truth=raw_aliccp.load_truth(split),
            calibration=checkpoint_calibration(
                result.checkpoint, cfg.runtime.auto_eval_ckpt, cfg.evaluation.calibration
            ),
            with_predictions=cfg.runtime.auto_eval_save_preds,
        )
        log.info("auto_eval (%s, %s): %s", split, cfg.runtime.auto_eval_ckpt, summarise(metrics))
        summary["auto_eval"] = {"split": split, "checkpoint": cfg.runtime.auto_eval_ckpt, **metrics}
        if p is not None:
            preds = p
    return result.checkpoint, result.history, summary, preds
