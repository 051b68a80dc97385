"""One training run from encoded shards: where it resumes from, the splits loaded onto the
device, the trainer run."""

from __future__ import annotations

import logging

from rec_pipeline.atomic_io import load_torch
from rec_pipeline.config import Config
from rec_pipeline.data.batches import load_splits
from rec_pipeline.data.metadata import DatasetMetadata
from rec_pipeline.data.shards import ShardSet
from rec_pipeline.train.checkpoint import Checkpoint
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
    training file's ``commons``); periodic states go to ``state_store``."""
    metadata = DatasetMetadata.coerce(metadata)
    resume = resume_point(cfg, state_store)
    device = resolve_device(cfg.runtime.device)
    splits = load_splits(metadata, {"train": train_rows, "valid": valid_rows}, commons, device)
    tr, va = splits["train"], splits["valid"]
    log.info("Loaded train (%d rows) and valid (%d rows) onto %s.", len(tr), len(va), device)
    trainer = Trainer(cfg, metadata.to_dict(), tr, va, resume=resume, state_store=state_store)
    return trainer.fit()
