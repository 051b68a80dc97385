"""Training nodes: train on the encoded splits, then the automatic evaluation of the trained weights."""

from __future__ import annotations

from typing import Any

import pandas as pd

from rec_pipeline.config import load_config, load_section
from rec_pipeline.data.shards import ShardSet
from rec_pipeline.train.evaluation import PREDICTION_COLUMNS
from rec_pipeline.train.run import evaluate_checkpoint, train
from rec_pipeline.train.state_store import TrainingStateStore


def train_model(
    encoded_train: ShardSet,
    encoded_valid: ShardSet,
    encoded_train_commons: ShardSet,
    metadata: dict,
    training_state: TrainingStateStore,
    parameters: dict[str, Any],
) -> tuple[dict, pd.DataFrame, dict]:
    """Checkpoint, history and summary of a training run.

    Takes the whole parameters, not sections: the checkpoint records the complete configuration
    so that evaluation rebuilds exactly the model that was trained.
    """
    cfg = load_config(parameters)
    result = train(
        cfg, metadata, encoded_train, encoded_valid, encoded_train_commons, training_state
    )
    return result.checkpoint, result.history, result.summary


def auto_evaluate(
    model_checkpoint: dict,
    encoded_valid: ShardSet,
    encoded_test: ShardSet,
    encoded_train_commons: ShardSet,
    encoded_test_commons: ShardSet,
    planted_truth_train: pd.DataFrame,
    planted_truth_test: pd.DataFrame,
    runtime: dict[str, Any],
    evaluation: dict[str, Any],
) -> tuple[pd.DataFrame, dict]:
    """``runtime.auto_eval``: the trained ``auto_eval_ckpt`` weights on ``auto_eval_split``."""
    rt, ev = load_section("runtime", runtime), load_section("evaluation", evaluation)
    if not rt.auto_eval:
        return pd.DataFrame(columns=PREDICTION_COLUMNS), {"enabled": False}
    test = rt.auto_eval_split == "test"
    preds, metrics = evaluate_checkpoint(
        model_checkpoint,
        rt.auto_eval_split,
        encoded_test if test else encoded_valid,
        encoded_test_commons if test else encoded_train_commons,
        planted_truth_test if test else planted_truth_train,
        which=rt.auto_eval_ckpt,
        settings=ev,
        device=rt.device,
        with_predictions=rt.auto_eval_save_preds,
    )
    return (pd.DataFrame(columns=PREDICTION_COLUMNS) if preds is None else preds), metrics
