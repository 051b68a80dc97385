"""Schedules: learning-rate factor, total steps, pos-weight clip, LambdaLR wrappers."""

from __future__ import annotations

import math

import pytest
import torch

from rec_pipeline.config import ConfigError, LRSchedulerConfig, PosWeightScheduleConfig, load_config
from rec_pipeline.train.schedules import (
    build_lr_schedulers,
    lr_factor,
    pos_weight_clip_at,
    resolve_total_steps,
)

SEED_COSINE = LRSchedulerConfig(
    enabled=True, target="both", type="cosine", warmup_steps=5000, total_steps=40000,
    min_lr_ratio=0.1,
)  # fmt: skip


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1 / 5000),  # (step + 1) / warmup: no zero-LR step
        (2499, 0.5),
        (4999, 1.0),
        (5000, 1.0),  # cosine starts at 1
        (22500, 0.1 + 0.9 * 0.5),  # half way: cos(pi / 2) = 0
        (5000 + 8750, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),  # a quarter
        (40000, 0.1),
        (60000, 0.1),  # constant after total_steps
    ],
)
def test_cosine_lr_factor(step, expected):
    assert lr_factor(step, SEED_COSINE, 40000) == pytest.approx(expected, rel=1e-9)


def test_step_lr_factor_and_disabled():
    cfg = LRSchedulerConfig(
        type="step", warmup_steps=10, step_milestones=[100, 200], step_gamma=0.5
    )
    assert lr_factor(4, cfg, 1000) == pytest.approx(0.5)
    assert lr_factor(10, cfg, 1000) == 1.0
    assert lr_factor(99, cfg, 1000) == 1.0
    assert lr_factor(100, cfg, 1000) == 0.5
    assert lr_factor(250, cfg, 1000) == 0.25
    off = LRSchedulerConfig(enabled=False, warmup_steps=10)
    assert lr_factor(0, off, 100) == 1.0 and lr_factor(5000, off, 100) == 1.0
    no_warm = LRSchedulerConfig(warmup_steps=0, min_lr_ratio=0.0)
    assert lr_factor(0, no_warm, 100) == 1.0
    assert lr_factor(50, no_warm, 100) == pytest.approx(0.5)


def test_resolve_total_steps():
    cfg = load_config({"optim": {"lr_scheduler": {"warmup_steps": 0, "total_steps": 123}}})
    assert resolve_total_steps(cfg, 1000) == 123
    cfg = load_config({"runtime": {"epochs": 3, "max_train_steps": 250}})
    assert resolve_total_steps(cfg, 100) == 250
    cfg = load_config({"runtime": {"epochs": 3}})
    assert resolve_total_steps(cfg, 100) == 300


def test_pos_weight_clip_schedules():
    piece = PosWeightScheduleConfig(
        enabled=True, type="piecewise", milestones=[0, 8000, 9000], values=[300, 30, 10]
    )
    assert pos_weight_clip_at(0, piece) == 300
    assert pos_weight_clip_at(7999, piece) == 300
    assert pos_weight_clip_at(8000, piece) == 30
    assert pos_weight_clip_at(8999, piece) == 30
    assert pos_weight_clip_at(10**6, piece) == 10
    lin = PosWeightScheduleConfig(
        enabled=True, type="linear", start_step=0, end_step=2000, start_value=400, end_value=100
    )
    assert pos_weight_clip_at(0, lin) == 400
    assert pos_weight_clip_at(500, lin) == pytest.approx(325)
    assert pos_weight_clip_at(2000, lin) == 100
    assert pos_weight_clip_at(5000, lin) == 100


def _opts():
    dense = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=6e-4)
    sparse = torch.optim.SparseAdam([torch.nn.Parameter(torch.zeros(3, 2))], lr=1e-3)
    return dense, sparse


@pytest.mark.parametrize("target", ["both", "dense"])
def test_build_lr_schedulers_follow_lr_factor(target):
    cfg = load_config(
        {
            "optim": {
                "lr_scheduler": {
                    "target": target,
                    "warmup_steps": 4,
                    "total_steps": 20,
                    "min_lr_ratio": 0.2,
                }
            }
        }
    )
    dense, sparse = _opts()
    sched = build_lr_schedulers(dense, sparse, cfg, total_steps=20)
    for step in range(25):
        f = lr_factor(step, cfg.optim.lr_scheduler, 20)
        assert dense.param_groups[0]["lr"] == pytest.approx(6e-4 * f)
        expected_sparse = 1e-3 * f if target == "both" else 1e-3
        assert sparse.param_groups[0]["lr"] == pytest.approx(expected_sparse)
        dense.step()
        sparse.step()
        sched.step()
    assert (sched.sparse is None) == (target == "dense")
    state = sched.state_dict()
    dense2, sparse2 = _opts()
    sched2 = build_lr_schedulers(dense2, sparse2, cfg, total_steps=20)
    sched2.load_state_dict(state)
    assert sched2.dense.last_epoch == 25


def test_step_fractions_resolve_to_counts_of_the_run():
    from rec_pipeline.train.schedules import resolve_step_fractions

    cfg = load_config(
        {
            "optim": {"lr_scheduler": {"warmup_steps": 0.125, "step_milestones": [0.5, 0.75]}},
            "loss": {
                "aux_focal": {"enabled": True, "warmup_steps": 0.2},
                "pos_weight_clip_schedule": {
                    "enabled": True,
                    "milestones": [0, 0.2],
                    "values": [300, 30],
                },
            },
            "runtime": {"valid_every": 0.1, "log_every": 7},
        }
    )
    r = resolve_step_fractions(cfg, 450)
    assert r.optim.lr_scheduler.warmup_steps == 56  # round(0.125 * 450)
    assert r.optim.lr_scheduler.step_milestones == [225, 338]
    assert r.loss.aux_focal.warmup_steps == 90
    assert r.loss.pos_weight_clip_schedule.milestones == [0, 90]
    assert r.valid_every == 45
    # Step counts stay as they are; the source config's behaviour is unchanged.
    counts = load_config(
        {"optim": {"lr_scheduler": {"warmup_steps": 190}}, "runtime": {"valid_every": None}}
    )
    assert resolve_step_fractions(counts, 450).optim.lr_scheduler.warmup_steps == 190
    assert resolve_step_fractions(counts, 450).valid_every == counts.runtime.log_every


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"optim": {"lr_scheduler": {"warmup_steps": 1.5}}}, "warmup_steps"),
        ({"loss": {"aux_focal": {"warmup_steps": -0.1}}}, "warmup_steps"),
        ({"runtime": {"valid_every": 0}}, "valid_every"),
        ({"optim": {"lr_scheduler": {"step_milestones": [100, 0.5]}}}, "step_milestones"),
    ],
)
def test_step_fractions_are_checked(params, key):
    with pytest.raises(ConfigError, match=key):
        load_config(params)


def test_auto_eval_of_last_weights_needs_save_last():
    # Caught before any work, not after a whole training run.
    with pytest.raises(ConfigError, match="runtime.auto_eval_ckpt"):
        load_config({"runtime": {"auto_eval_ckpt": "last", "save_last": False}})
    load_config({"runtime": {"auto_eval_ckpt": "last", "save_last": True}})
    load_config({"runtime": {"auto_eval": False, "auto_eval_ckpt": "last"}})
