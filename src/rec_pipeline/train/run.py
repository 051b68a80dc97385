"""One training run from encoded shards: load the splits onto the device, train, return."""

from __future__ import annotations

import logging

from rec_pipeline.config import Config
from rec_pipeline.data.batches import load_splits
from rec_pipeline.data.metadata import DatasetMetadata
from rec_pipeline.data.shards import ShardSet
from rec_pipeline.train.loop import Trainer, TrainResult, resolve_device

log = logging.getLogger(__name__)


def train(
    cfg: Config,
    metadata: DatasetMetadata | dict,
    train_rows: ShardSet,
    valid_rows: ShardSet,
    commons: ShardSet,
    resume: dict | None = None,
) -> TrainResult:
    """Train per ``cfg`` on ``train_rows``, validating on ``valid_rows`` (both joined to the
    training file's ``commons``); ``resume`` is a saved checkpoint to continue from."""
    metadata = DatasetMetadata.coerce(metadata)
    device = resolve_device(cfg.runtime.device)
    splits = load_splits(metadata, {"train": train_rows, "valid": valid_rows}, commons, device)
    train_split, valid = splits["train"], splits["valid"]
    log.info(
        "Loaded train (%d rows) and valid (%d rows) onto %s.", len(train_split), len(valid), device
    )
    return Trainer(cfg, metadata.to_dict(), train_split, valid, resume=resume).fit()
