"""Shared by the benchmark scripts: the latest encoded data of a project data root."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pandas as pd
import torch

from rec_pipeline.data.batches import SplitData, load_splits
from rec_pipeline.data.shards import ShardSet


def load(
    data_root: str | Path, device: torch.device | str, splits=("train",)
) -> tuple[dict, dict[str, SplitData], pd.DataFrame | None]:
    """(metadata, {split: SplitData}, test truth or None) from `kedro run --pipeline=data` output."""
    root = Path(data_root)
    meta_path = sorted(glob.glob(str(root / "05_model_input/metadata.json/*/metadata.json")))[-1]
    meta = json.loads(Path(meta_path).read_text())
    enc = root / "05_model_input/encoded"
    out = load_splits(
        meta,
        {s: ShardSet(enc / s) for s in splits if s != "test"},
        ShardSet(enc / "train_commons"),
        device,
    )
    if "test" in splits:
        out.update(
            load_splits(
                meta, {"test": ShardSet(enc / "test")}, ShardSet(enc / "test_commons"), device
            )
        )
    truth_path = root / "05_model_input/planted_truth_test.parquet"
    truth = pd.read_parquet(truth_path) if truth_path.exists() else None
    return meta, out, truth
