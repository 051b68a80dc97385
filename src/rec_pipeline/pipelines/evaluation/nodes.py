"""Evaluation nodes: a saved checkpoint on a chosen split, without retraining."""

from __future__ import annotations

from typing import Any

import pandas as pd

from rec_pipeline.config import load_section
from rec_pipeline.data.shards import ShardSet
from rec_pipeline.train.run import evaluate_checkpoint


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
