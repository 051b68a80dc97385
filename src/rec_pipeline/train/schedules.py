"""Schedules as pure functions of the optimisation step (0-based), plus their LambdaLR wrappers.

Step convention: ``step`` is the number of optimiser steps already taken, so the first update
uses ``step = 0``. ``torch.optim.lr_scheduler.LambdaLR`` follows it when the trainer calls
``scheduler.step()`` once after every ``optimizer.step()``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..config import Config, LRSchedulerConfig, PosWeightScheduleConfig


def warmup_factor(step: int, warmup_steps: int) -> float:
    """``(step + 1) / warmup_steps`` during warm-up, 1 after.

    ``step + 1`` (not ``step``) so that no update runs at a zero learning rate: the first step
    uses ``1 / warmup_steps`` of the base rate and step ``warmup_steps - 1`` the full rate.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (max(step, 0) + 1) / warmup_steps


def lr_factor(step: int, sched_cfg: LRSchedulerConfig, total_steps: int) -> float:
    """Multiplier of the base learning rate at ``step``.

    disabled: 1.
    cosine: linear warm-up (:func:`warmup_factor`) over ``warmup_steps``, then
        ``r + (1 - r) * 0.5 * (1 + cos(pi * (step - W) / (total_steps - W)))`` with
        ``r = min_lr_ratio``, reaching ``r`` at ``total_steps`` and constant after.
    step: the same warm-up, then ``gamma ** (number of step_milestones <= step)``.
    """
    if not sched_cfg.enabled:
        return 1.0
    w = int(sched_cfg.warmup_steps)
    if step < w:
        return warmup_factor(step, w)
    if sched_cfg.type == "step":
        n = bisect.bisect_right(sched_cfg.step_milestones, step)
        return float(sched_cfg.step_gamma**n)
    r = float(sched_cfg.min_lr_ratio)
    span = max(int(total_steps) - w, 1)
    progress = min(max((step - w) / span, 0.0), 1.0)
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_total_steps(cfg: Config, steps_per_epoch: int) -> int:
    """``optim.lr_scheduler.total_steps`` when set; else ``steps_per_epoch * runtime.epochs``
    capped by ``runtime.max_train_steps`` (at least 1)."""
    explicit = cfg.optim.lr_scheduler.total_steps
    if explicit is not None:
        return int(explicit)
    total = int(steps_per_epoch) * int(cfg.runtime.epochs)
    if cfg.runtime.max_train_steps is not None:
        total = min(total, int(cfg.runtime.max_train_steps))
    return max(total, 1)


def pos_weight_clip_at(step: int, schedule_cfg: PosWeightScheduleConfig) -> float:
    """The scheduled positive-weight clip at ``step``.

    piecewise: ``values[i]`` for the last ``milestones[i] <= step`` (milestones start at 0).
    linear: ``start_value`` up to ``start_step``, linear to ``end_value`` at ``end_step``,
        ``end_value`` after.
    """
    if schedule_cfg.type == "piecewise":
        i = bisect.bisect_right(schedule_cfg.milestones, step) - 1
        return float(schedule_cfg.values[max(i, 0)])
    s0, s1 = schedule_cfg.start_step, schedule_cfg.end_step
    if step <= s0:
        return float(schedule_cfg.start_value)
    if step >= s1:
        return float(schedule_cfg.end_value)
    t = (step - s0) / (s1 - s0)
    return float(schedule_cfg.start_value + t * (schedule_cfg.end_value - schedule_cfg.start_value))


@dataclass
class LRSchedulers:
    """The dense optimiser's scheduler and, with ``target: both``, the sparse one's."""

    dense: LambdaLR
    sparse: LambdaLR | None = None

    def step(self) -> None:
        self.dense.step()
        if self.sparse is not None:
            self.sparse.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "dense": self.dense.state_dict(),
            "sparse": None if self.sparse is None else self.sparse.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense.load_state_dict(state["dense"])
        if self.sparse is not None and state.get("sparse") is not None:
            self.sparse.load_state_dict(state["sparse"])

    def sync_lr(self) -> None:
        """Set each optimiser's learning rate from this schedule at the current step (after
        loading a state saved under another schedule)."""
        for sched in (self.dense, self.sparse):
            if sched is None:
                continue
            lrs = [
                base * fn(sched.last_epoch)
                for base, fn in zip(sched.base_lrs, sched.lr_lambdas, strict=True)
            ]
            for group, lr in zip(sched.optimizer.param_groups, lrs, strict=True):
                if torch.is_tensor(group["lr"]):  # the static step's device-held rate
                    group["lr"].fill_(float(lr))
                else:
                    group["lr"] = lr
            sched._last_lr = lrs


def build_lr_schedulers(
    dense_opt: Optimizer, sparse_opt: Optimizer | None, cfg: Config, total_steps: int
) -> LRSchedulers:
    """LambdaLR schedulers following :func:`lr_factor`.

    The dense optimiser is always scheduled (factor 1 when the schedule is disabled, so the
    checkpoint layout does not depend on it); the sparse one only with ``target: both``.
    """
    sched_cfg = cfg.optim.lr_scheduler

    def factor(step: int) -> float:
        return lr_factor(step, sched_cfg, total_steps)

    dense = LambdaLR(dense_opt, lr_lambda=factor)
    sparse = None
    if sparse_opt is not None and sched_cfg.target == "both":
        sparse = LambdaLR(sparse_opt, lr_lambda=factor)
    return LRSchedulers(dense=dense, sparse=sparse)


def _steps(value: float, total_steps: int) -> int:
    """A step count as is; a fraction in (0, 1) of ``total_steps``, rounded (at least 1)."""
    if isinstance(value, float):
        return max(1, round(value * total_steps))
    return int(value)


def resolve_step_fractions(cfg: Config, total_steps: int) -> Config:
    """A copy of ``cfg`` whose step-valued keys given as fractions of the run are step counts.

    Keys: ``optim.lr_scheduler.warmup_steps`` and ``step_milestones``,
    ``loss.aux_focal.warmup_steps``, ``loss.pos_weight_clip_schedule.milestones``,
    ``runtime.valid_every`` and ``runtime.checkpoint_every``; a float in (0, 1) is that share of ``total_steps`` (the LR
    schedule's span), so one configuration keeps the shape of its schedule at any data size.
    Step counts (ints) are kept as they are.
    """
    sched = cfg.optim.lr_scheduler
    focal = cfg.loss.aux_focal
    clip = cfg.loss.pos_weight_clip_schedule
    rt = cfg.runtime
    return cfg.model_copy(
        update={
            "optim": cfg.optim.model_copy(
                update={
                    "lr_scheduler": sched.model_copy(
                        update={
                            "warmup_steps": _steps(sched.warmup_steps, total_steps),
                            "step_milestones": [
                                _steps(m, total_steps) for m in sched.step_milestones
                            ],
                        }
                    )
                }
            ),
            "loss": cfg.loss.model_copy(
                update={
                    "aux_focal": focal.model_copy(
                        update={"warmup_steps": _steps(focal.warmup_steps, total_steps)}
                    ),
                    "pos_weight_clip_schedule": clip.model_copy(
                        update={"milestones": [_steps(m, total_steps) for m in clip.milestones]}
                    ),
                }
            ),
            "runtime": rt.model_copy(
                update={
                    "valid_every": None
                    if rt.valid_every is None
                    else _steps(rt.valid_every, total_steps),
                    "checkpoint_every": None
                    if rt.checkpoint_every is None
                    else _steps(rt.checkpoint_every, total_steps),
                }
            ),
        }
    )
