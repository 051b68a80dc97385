"""Runs from encoded shards: a training run (where it resumes from, the splits on the device,
the trainer), and a saved checkpoint scored on one split."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from rec_pipeline.atomic_io import load_torch
from rec_pipeline.config import Config, EvaluationConfig, load_config
from rec_pipeline.data.batches import load_splits
from rec_pipeline.data.metadata import DatasetMetadata
from rec_pipeline.data.shards import ShardSet
from rec_pipeline.train.checkpoint import (
    Checkpoint,
    checkpoint_calibration,
    checkpoint_ctr_pos_weight,
    model_from_checkpoint,
)
from rec_pipeline.train.distributed import Ranks, launch, world_size
from rec_pipeline.train.evaluation import Correction, evaluate_model, summarise
from rec_pipeline.train.loop import Trainer, TrainResult, resolve_device
from rec_pipeline.train.state_store import TrainingStateStore

log = logging.getLogger(__name__)


def resume_point(cfg: Config, store: TrainingStateStore | None) -> Checkpoint | dict | None:
    """What ``runtime.resume`` / ``runtime.resume_path`` name: the newest periodic state, a
    saved checkpoint file, or nothing (a fresh run)."""
    rt = cfg.runtime
    if rt.resume == "latest":
        state = store.latest() if store is not None else None
        if state is None:
            log.warning("runtime.resume=latest: no training state yet, starting afresh.")
        return state
    if rt.resume_path:
        return load_torch(rt.resume_path)
    return None


def train(
    cfg: Config,
    metadata: DatasetMetadata | dict,
    train_rows: ShardSet,
    valid_rows: ShardSet,
    commons: ShardSet,
    state_store: TrainingStateStore | None = None,
) -> TrainResult:
    """Train per ``cfg`` on ``train_rows``, validating on ``valid_rows`` (both joined to the
    training file's ``commons``); periodic states go to ``state_store``. With
    ``runtime.devices`` > 1 the run is data-parallel over that many local devices, started from
    here; the result is the same kind either way."""
    metadata = DatasetMetadata.coerce(metadata)
    resume = resume_point(cfg, state_store)
    device = resolve_device(cfg.runtime.device)
    world = world_size(cfg.runtime.devices, device.type)
    if world > 1:
        log.info("Training data-parallel on %d %s devices.", world, device.type)
        args = (cfg, metadata.to_dict(), train_rows, valid_rows, commons, resume, state_store)
        return launch(_train_rank, world, device.type, *args)
    return _fit(cfg, metadata, train_rows, valid_rows, commons, resume, state_store, device)


def _fit(cfg, metadata, train_rows, valid_rows, commons, resume, store, device, ranks=None):
    splits = load_splits(metadata, {"train": train_rows, "valid": valid_rows}, commons, device)
    tr, va = splits["train"], splits["valid"]
    log.info("Loaded train (%d rows) and valid (%d rows) onto %s.", len(tr), len(va), device)
    trainer = Trainer(cfg, metadata, tr, va, resume=resume, state_store=store, ranks=ranks)
    return trainer.fit()


def _train_rank(ranks: Ranks, cfg, metadata, train_rows, valid_rows, commons, resume, store):
    """One rank of a data-parallel run (in its own process); rank 0 alone saves states."""
    store = store if ranks.is_main else None
    return _fit(cfg, metadata, train_rows, valid_rows, commons, resume, store, ranks.device, ranks)


def evaluate_checkpoint(
    checkpoint: dict,
    split: str,
    samples: ShardSet,
    commons: ShardSet,
    truth: pd.DataFrame | None,
    *,
    which: str,
    settings: EvaluationConfig,
    device: str,
    with_predictions: bool = True,
) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """Predictions and metrics (docs/model.md, Metrics) of the checkpoint's ``which`` weights
    (best or last) on one split, in fp32. The checkpoint, not today's parameters, defines the
    model, its data layout and its calibration; ``settings`` is the ``evaluation`` section."""
    dev = resolve_device(device)
    metadata = DatasetMetadata.coerce(checkpoint["metadata"])
    trained = load_config(checkpoint["config"])
    data = load_splits(metadata, {split: samples}, commons, dev)[split]
    correction = Correction(
        keep_prob=metadata.neg_keep_prob_train,
        ctr_pos_weight=checkpoint_ctr_pos_weight(checkpoint, which, settings.correct_pos_weight),
        calibration=checkpoint_calibration(checkpoint, which, settings.calibration),
    )
    result = evaluate_model(
        model_from_checkpoint(checkpoint, which, dev),
        data,
        batch_size=settings.batch_size,
        esmm=trained.use_esmm,
        correction=correction,
        n_bins=settings.calibration_bins,
        truth=truth,
        with_predictions=with_predictions,
    )
    metrics = result.metrics
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
    return result.predictions, metrics
