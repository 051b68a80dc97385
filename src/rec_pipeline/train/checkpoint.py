"""The checkpoint: one typed record of the weights kept, what they were trained with, and the
state a run resumes from (optimisers, schedulers, RNGs, data position, history).

It is saved as a plain dict of tensors and Python values (:meth:`Checkpoint.to_dict`), so
``torch.load(weights_only=True)`` reads it without the training code's classes.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from rec_pipeline.config import load_config
from rec_pipeline.model.builder import ModelMeta, build_model

CHECKPOINT_FORMAT = 2
_FORMATS = (1, 2)


def _require(d: dict, key: str, what: str) -> Any:
    if key not in d:
        raise ValueError(f"invalid checkpoint: the {what} has no '{key}'")
    return d[key]


@dataclass
class Snapshot:
    """A set of weights kept by training (the best by validation, or the last) and what goes
    with them: the step, the validation metrics, the pos_weight and the Platt calibration."""

    step: int
    state_dict: dict[str, torch.Tensor]
    metrics: dict = field(default_factory=dict)
    pos_weight: dict = field(default_factory=dict)
    calibration: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Snapshot | None:
        if d is None:
            return None
        return cls(
            step=int(_require(d, "step", "snapshot")),
            state_dict=_require(d, "state_dict", "snapshot"),
            metrics=d.get("metrics") or {},
            pos_weight=d.get("pos_weight") or {},
            calibration=d.get("calibration"),
        )


@dataclass
class RNGState:
    """Every random generator a training step may draw from: torch (CPU and the current CUDA
    device), numpy's global generator and Python's ``random``."""

    torch_cpu: torch.Tensor
    torch_cuda: torch.Tensor | None = None
    numpy: dict | None = None
    python: list | None = None

    @classmethod
    def capture(cls, device: torch.device) -> RNGState:
        # The legacy global generator, which third-party code may draw from.
        _, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
        version, internal, gauss_next = random.getstate()
        return cls(
            torch_cpu=torch.get_rng_state(),
            torch_cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            numpy={
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            python=[version, list(internal), gauss_next],
        )

    def restore(self, device: torch.device) -> None:
        torch.set_rng_state(self.torch_cpu)
        if device.type == "cuda" and self.torch_cuda is not None:
            torch.cuda.set_rng_state(self.torch_cuda, device)
        if self.numpy is not None:
            n = self.numpy
            keys = n["keys"].numpy().astype(np.uint32)
            legacy = ("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"])
            np.random.set_state(legacy)  # noqa: NPY002
        if self.python is not None:
            version, internal, gauss_next = self.python
            random.setstate((version, tuple(internal), gauss_next))


@dataclass
class TrainingState:
    """What a run needs, beside the last weights, to continue exactly where it stopped.

    The data position is ``divmod(step, steps_per_epoch)``: the epoch (which seeds its row
    order) and the batches of it already trained on. ``schedule_total_steps`` is the span the
    LR schedule was built over, so a resumed run can continue the same schedule. ``log_window``
    holds the loss sums of the log interval in progress, so the history is the same too.
    """

    step: int
    steps_per_epoch: int | None
    schedule_total_steps: int | None
    optimizers: dict
    schedulers: dict
    pos_weights: dict
    scaler: dict
    rng: RNGState
    history: list[dict] = field(default_factory=list)
    log_window: dict = field(default_factory=dict)
    nonfinite_skipped: int = 0

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch if self.steps_per_epoch else 0

    @property
    def batch_in_epoch(self) -> int:
        return self.step % self.steps_per_epoch if self.steps_per_epoch else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rng"] = asdict(self.rng)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainingState:
        what = "training state"
        names = ("optimizers", "schedulers", "pos_weights", "scaler", "rng", "history")
        req = {k: _require(d, k, what) for k in names}
        return cls(
            step=int(_require(d, "step", what)),
            steps_per_epoch=d.get("steps_per_epoch"),
            schedule_total_steps=d.get("schedule_total_steps"),
            optimizers=req["optimizers"],
            schedulers=req["schedulers"],
            pos_weights=req["pos_weights"],
            scaler=req["scaler"],
            rng=RNGState(**req["rng"]),
            history=list(req["history"]),
            log_window=d.get("log_window") or {},
            nonfinite_skipped=int(d.get("nonfinite_skipped", 0)),
        )

    @classmethod
    def from_format1(cls, last: dict) -> TrainingState:
        """The resumable part of a format-1 checkpoint's ``last`` entry."""
        return cls(
            step=int(last["step"]),
            steps_per_epoch=None,
            schedule_total_steps=None,
            optimizers=last["optimizers"],
            schedulers=last["schedulers"],
            pos_weights=last["pos_weights"],
            scaler=last["scaler"],
            rng=RNGState(torch_cpu=last["rng_torch"], torch_cuda=last.get("rng_cuda")),
            history=list(last["history"]),
        )


@dataclass
class Checkpoint:
    """Everything training keeps: the model's build inputs (config, model meta, data metadata
    with its vocabulary fingerprint), the best and last weights, and the resumable state."""

    config: dict
    metadata: dict
    model_meta: dict
    parameter_counts: dict
    best: Snapshot | None
    last: Snapshot | None = None
    state: TrainingState | None = None
    format: int = CHECKPOINT_FORMAT

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "config": self.config,
            "metadata": self.metadata,
            "model_meta": self.model_meta,
            "parameter_counts": self.parameter_counts,
            "best": None if self.best is None else self.best.to_dict(),
            "last": None if self.last is None else self.last.to_dict(),
            "state": None if self.state is None else self.state.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict | Checkpoint) -> Checkpoint:
        if isinstance(d, Checkpoint):
            return d
        if not isinstance(d, dict):
            raise ValueError(f"invalid checkpoint: expected a dict, got {type(d).__name__}")
        fmt = d.get("format")
        if fmt not in _FORMATS:
            raise ValueError(f"invalid checkpoint: format {fmt!r} (this code reads {_FORMATS})")
        if fmt == 1:
            last = d.get("last")
            state = None if last is None else TrainingState.from_format1(last)
        else:
            state = None if d.get("state") is None else TrainingState.from_dict(d["state"])
        return cls(
            config=_require(d, "config", "checkpoint"),
            metadata=_require(d, "metadata", "checkpoint"),
            model_meta=_require(d, "model_meta", "checkpoint"),
            parameter_counts=d.get("parameter_counts") or {},
            best=Snapshot.from_dict(d.get("best")),
            last=Snapshot.from_dict(d.get("last")),
            state=state,
        )


def _as_dict(checkpoint: dict | Checkpoint) -> dict:
    return checkpoint.to_dict() if isinstance(checkpoint, Checkpoint) else checkpoint


def checkpoint_ctr_pos_weight(checkpoint: dict | Checkpoint, which: str, correct: bool) -> float:
    """The CTR pos_weight the ``which`` weights were trained with (1 when not correcting)."""
    entry = _as_dict(checkpoint).get(which) or {}
    return float((entry.get("pos_weight") or {}).get("ctr", 1.0)) if correct else 1.0


def checkpoint_calibration(checkpoint: dict | Checkpoint, which: str, method: str) -> dict | None:
    """The Platt parameters stored with the ``which`` weights when ``method`` is ``platt``
    (None otherwise, or for a checkpoint that has none: the odds correction then applies)."""
    if method != "platt":
        return None
    return (_as_dict(checkpoint).get(which) or {}).get("calibration")


def model_from_checkpoint(
    checkpoint: dict | Checkpoint, which: str = "best", device="cpu"
) -> torch.nn.Module:
    """Rebuild the model from a checkpoint alone (config + model meta + weights)."""
    checkpoint = _as_dict(checkpoint)
    cfg = load_config(checkpoint["config"])
    model = build_model(cfg, ModelMeta(**checkpoint["model_meta"]))
    entry = checkpoint.get(which)
    if entry is None:
        raise ValueError(
            f"the checkpoint has no '{which}' weights"
            + (" (train with runtime.save_last: true)" if which == "last" else "")
        )
    model.load_state_dict(entry["state_dict"])
    return model.to(device).eval()
