"""The training loop: steps, schedules, validation, best checkpoint, diagnostics, resume.

A step is: gather a batch (tensor ops, sizes known on the host), forward under autocast, fp32
losses, backward, clip, two optimiser steps, two scheduler steps. Loss components are summed on
the device and read back only at log steps, so the loop does not wait on the GPU between logs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from rec_pipeline.config import Config, load_config
from rec_pipeline.data.batches import SplitData
from rec_pipeline.metrics.evaluate import flat_metrics
from rec_pipeline.model.builder import ModelMeta, build_model, parameter_counts
from rec_pipeline.train.diagnostics import (
    health_metrics,
    task_gradient_stats,
    task_losses_for_diagnostics,
)
from rec_pipeline.train.evaluation import (
    Correction,
    evaluate_model,
    fit_calibration,
    predict,
    summarise,
)
from rec_pipeline.train.inference import autocast
from rec_pipeline.train.losses import PosWeights, compute_losses
from rec_pipeline.train.optim import build_optimizers
from rec_pipeline.train.schedules import (
    build_lr_schedulers,
    resolve_step_fractions,
    resolve_total_steps,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def resolve_device(requested: str) -> torch.device:
    """``cuda`` falls back to the CPU with a warning; ``auto`` picks CUDA when present."""
    if requested in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        log.warning("runtime.device is 'cuda' but no GPU is available: training on the CPU.")
    return torch.device("cpu")


def resolve_amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it (fp16 otherwise); no autocast on the CPU."""
    if not cfg.runtime.amp or device.type != "cuda":
        return None
    if cfg.runtime.amp_dtype == "fp16":
        return torch.float16
    if cfg.runtime.amp_dtype == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def model_meta_from_metadata(metadata: dict) -> ModelMeta:
    """The model's view of the data: field order, table sizes, training positive rates."""
    fields = metadata["fields"]
    train = metadata["splits"]["train"]
    return ModelMeta(
        skeleton_fields=[f["name"] for f in fields if f["side"] == "skeleton"],
        common_fields=[f["name"] for f in fields if f["side"] == "common"],
        vocab_sizes={f["name"]: int(f["vocab_size"]) for f in fields},
        prior_rates={
            "ctr": float(np.clip(train["ctr"] or 0.05, 1e-6, 1 - 1e-6)),
            "cvr": float(np.clip(train["cvr"] or 0.01, 1e-6, 1 - 1e-6)),
        },
    )


#: Columns of the training history; task / expert / other_task are empty where they do not apply.
HISTORY_COLUMNS = ["step", "kind", "name", "task", "expert", "other_task", "value"]


@dataclass
class History:
    """Long-format metric history: one row per (step, kind, name[, task, expert, other_task])."""

    rows: list[dict] = field(default_factory=list)

    def add(self, step: int, kind: str, values: dict) -> None:
        for name, value in values.items():
            if value is None:
                continue
            self.rows.append({"step": int(step), "kind": kind, "name": name, "value": float(value)})

    def add_rows(self, step: int, kind: str, rows: list[dict]) -> None:
        """Rows with their own ``name``, ``value`` and optional task / expert / other_task."""
        for row in rows:
            self.rows.append({**row, "step": int(step), "kind": kind, "value": float(row["value"])})

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=HISTORY_COLUMNS)
        frame["expert"] = frame["expert"].astype("Int64")
        return frame


@dataclass
class TrainResult:
    checkpoint: dict
    history: pd.DataFrame
    summary: dict
    eval_metrics: dict | None = None
    eval_predictions: pd.DataFrame | None = None


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _grads_finite(optimizers) -> bool:
    """Whether every gradient (dense or sparse) of these optimisers is finite."""
    ok = []
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                values = g.coalesce().values() if g.is_sparse else g
                ok.append(torch.isfinite(values).all())
    return bool(torch.stack(ok).all()) if ok else True


class Trainer:
    """Trains the model of ``cfg`` on tensor-resident splits; :meth:`fit` returns a TrainResult.

    Steps run until ``runtime.epochs`` epochs or ``runtime.max_train_steps``; the LR schedule
    spans ``optim.lr_scheduler.total_steps`` (derived from the data when omitted). ``resume``
    is a checkpoint with a ``last`` state: training continues exactly where it stopped.
    """

    def __init__(
        self,
        cfg: Config,
        metadata: dict,
        train: SplitData,
        valid: SplitData | None,
        *,
        resume: dict | None = None,
    ):
        self.cfg = cfg
        self.metadata = metadata
        self.train_data = train
        self.valid_data = valid
        self.device = train.device
        self.amp_dtype = resolve_amp_dtype(cfg, self.device)
        self.meta = model_meta_from_metadata(metadata)
        torch.manual_seed(cfg.runtime.seed)
        self.model = build_model(cfg, self.meta).to(self.device)
        self.opt = build_optimizers(self.model, cfg)
        bs = cfg.data.batch_size
        n = len(train)
        self.steps_per_epoch = n // bs if cfg.data.drop_last else math.ceil(n / bs)
        if self.steps_per_epoch == 0:
            raise ValueError(f"training split has {n} rows: fewer than one batch of {bs}")
        self.total_steps = resolve_total_steps(cfg, self.steps_per_epoch)
        # Step-valued keys given as fractions of the run become step counts from here on.
        self.cfg = cfg = resolve_step_fractions(cfg, self.total_steps)
        self.stop_step = cfg.runtime.epochs * self.steps_per_epoch
        if cfg.runtime.max_train_steps:
            self.stop_step = min(self.stop_step, cfg.runtime.max_train_steps)
        self.scheds = build_lr_schedulers(self.opt.dense, self.opt.sparse, cfg, self.total_steps)
        self.pos_weights = PosWeights(cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.history = History()
        self.step = 0
        self.best: dict | None = None
        self.keep_prob = float(metadata.get("neg_keep_prob_train", 1.0))
        if resume is not None:
            self._restore(resume)
        counts = parameter_counts(self.model)
        log.info(
            "Model: %s parameters (%s dense). Device %s, AMP %s, %d steps/epoch, stop at %d, "
            "LR schedule over %d steps.",
            f"{counts['total']:,}",
            f"{counts['dense_total']:,}",
            self.device,
            self.amp_dtype,
            self.steps_per_epoch,
            self.stop_step,
            self.total_steps,
        )
        self.param_counts = counts

    # ------------------------------------------------------------------------------- state
    def _state(self) -> dict:
        st = {
            "step": self.step,
            "pos_weight": self.pos_weights.current(self.step),
            "state_dict": _cpu_state(self.model),
            "optimizers": self.opt.state_dict(),
            "schedulers": self.scheds.state_dict(),
            "pos_weights": self.pos_weights.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "history": list(self.history.rows),
            "best": self.best,
        }
        if self.device.type == "cuda":
            st["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return st

    def _restore(self, ckpt: dict) -> None:
        last = ckpt.get("last")
        if last is None:
            raise ValueError(
                "runtime.resume_path: the checkpoint has no resumable state (train it with "
                "runtime.save_last: true)"
            )
        self.model.load_state_dict(last["state_dict"])
        self.opt.load_state_dict(last["optimizers"])
        self.scheds.load_state_dict(last["schedulers"])
        self.pos_weights.load_state_dict(last["pos_weights"])
        self.scaler.load_state_dict(last["scaler"])
        torch.set_rng_state(last["rng_torch"])
        if self.device.type == "cuda" and "rng_cuda" in last:
            torch.cuda.set_rng_state(last["rng_cuda"], self.device)
        self.history.rows = list(last["history"])
        self.best = last["best"]
        self.step = int(last["step"])
        log.info("Resumed at step %d.", self.step)

    # ---------------------------------------------------------------------------- training
    def fit(self) -> TrainResult:
        cfg, rt = self.cfg, self.cfg.runtime
        bs = cfg.data.batch_size
        bar = tqdm(
            total=self.stop_step,
            initial=self.step,
            disable=not rt.progress_bar,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
        )
        names: list[str] = []
        sums: torch.Tensor | None = None  # running sums of the loss components, on the device
        n_in_window, t_window, rows_window = 0, time.perf_counter(), 0
        t_start = time.perf_counter()
        rows_seen, valid_s = 0, 0.0
        self.model.train()
        while self.step < self.stop_step:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            rng = np.random.default_rng([rt.seed, epoch])
            for batch in self.train_data.iter_batches(
                bs, shuffle=True, generator=rng, drop_last=cfg.data.drop_last, start=skip
            ):
                if self.step >= self.stop_step:
                    break
                names, values = self._train_step(batch)
                sums = values if sums is None else sums + values
                n_in_window += 1
                rows_window += batch.size
                rows_seen += batch.size
                self.step += 1
                bar.update(1)
                if self.step % rt.log_every == 0 or self.step == self.stop_step:
                    means = dict(zip(names, (sums / n_in_window).tolist(), strict=True))
                    dt = time.perf_counter() - t_window
                    means["samples_per_s"] = rows_window / max(dt, 1e-9)
                    means.update(self._schedule_values())
                    self.history.add(self.step, "train", means)
                    bar.set_postfix(
                        loss=f"{means['loss_total']:.4f}", sps=f"{means['samples_per_s']:,.0f}"
                    )
                    log.info(
                        "step %d/%d loss %.5f (ctr %.4f ctcvr %.4f) lr %.2e %.0f samples/s",
                        self.step,
                        self.stop_step,
                        means["loss_total"],
                        means.get("loss_ctr", float("nan")),
                        means.get("loss_ctcvr", means.get("loss_cvr", float("nan"))),
                        means["lr_dense"],
                        means["samples_per_s"],
                    )
                    sums, n_in_window, rows_window = None, 0, 0
                    t_window = time.perf_counter()
                end_of_epoch = self.step % self.steps_per_epoch == 0
                if (
                    self.step % self.cfg.valid_every == 0
                    or end_of_epoch
                    or self.step == self.stop_step
                ):
                    t_valid = time.perf_counter()
                    self._validate()
                    spent = time.perf_counter() - t_valid
                    valid_s += spent
                    t_window += spent  # validation time is not training throughput
        bar.close()
        elapsed = time.perf_counter() - t_start
        return self._result(elapsed, valid_s, rows_seen)

    def _schedule_values(self) -> dict[str, float]:
        out = {"lr_dense": self.opt.dense.param_groups[0]["lr"]}
        if self.opt.sparse is not None:
            out["lr_sparse"] = self.opt.sparse.param_groups[0]["lr"]
        for task, w in self.pos_weights.current(self.step).items():
            out[f"pos_weight_{task}"] = w
        return out

    def _train_step(self, batch) -> tuple[list[str], torch.Tensor]:
        cfg, rt = self.cfg, self.cfg.runtime
        with autocast(self.device, self.amp_dtype):
            out = self.model(batch)
        self.pos_weights.observe(batch.click, batch.conversion)
        pw = self.pos_weights.current(self.step)
        res = compute_losses(
            out, batch.click, batch.conversion, step=self.step, cfg=cfg, pos_weight=pw
        )
        diag_step = rt.grad_diag_enabled and self.step % self.cfg.grad_diag_every == 0
        if diag_step and len(cfg.model.tasks) >= rt.grad_diag_min_tasks:
            stats = task_gradient_stats(
                self.model, task_losses_for_diagnostics(res.components, cfg)
            )
            self.history.add_rows(self.step, "grad", stats)
        if rt.log_health_metrics and (self.step + 1) % rt.log_every == 0:
            with torch.no_grad():
                self.history.add_rows(
                    self.step + 1, "health", health_metrics(out, batch.click, batch.conversion)
                )
        self.opt.zero_grad()
        self.scaler.scale(res.total).backward()
        self._apply_gradients()
        self.scheds.step()
        # One stacked vector per step: one add per step, one device read per log line.
        return res.stacked()

    def _apply_gradients(self) -> None:
        """Clip and step both optimisers through the GradScaler.

        With fp16 loss scaling (the scaler is enabled) both optimisers' gradients are unscaled,
        and a step whose gradients hold an inf or NaN anywhere is skipped by both optimisers
        together (the scaler then lowers its scale): SparseAdam must never step on scaled or
        overflowed embedding gradients. bf16 and fp32 need no scaling: the scaler is a no-op.
        """
        rt = self.cfg.runtime
        skip = False
        if self.scaler.is_enabled():
            for opt in self.opt.all():
                self.scaler.unscale_(opt)
            skip = not _grads_finite(self.opt.all())  # one host sync, fp16 only
        if rt.grad_clip_norm:
            # (unscale_ is a no-op when the scaler is disabled, and done above when enabled)
            # Dense parameters only: the embedding tables' gradients are sparse rows.
            torch.nn.utils.clip_grad_norm_(
                self.opt.dense.param_groups[0]["params"], rt.grad_clip_norm
            )
        if not skip:
            for opt in self.opt.all():
                self.scaler.step(opt)
        self.scaler.update()

    def _ctr_pos_weight(self) -> float:
        if not self.cfg.evaluation.correct_pos_weight:
            return 1.0
        return float(self.pos_weights.current(self.step)["ctr"])

    # -------------------------------------------------------------------------- validation
    def _validate(self) -> None:
        if self.valid_data is None or len(self.valid_data) == 0:
            return
        result = evaluate_model(
            self.model,
            self.valid_data,
            batch_size=self._valid_batch_size(),
            esmm=self.cfg.use_esmm,
            correction=Correction(self.keep_prob, self._ctr_pos_weight()),
            n_bins=self.cfg.evaluation.calibration_bins,
            max_batches=self.cfg.runtime.max_valid_steps,
        )
        metrics = result.metrics
        flat = flat_metrics(metrics)
        self.history.add(self.step, "valid", flat)
        log.info("valid @ step %d: %s", self.step, summarise(metrics))
        primary = metrics.get("auc_primary")
        if primary is not None and (
            self.best is None or primary > self.best["metrics"]["auc_primary"]
        ):
            self.best = {
                "step": self.step,
                "metrics": flat,
                "pos_weight": self.pos_weights.current(self.step),
                "calibration": fit_calibration(result.outputs),
                "state_dict": _cpu_state(self.model),
            }

    def _valid_batch_size(self) -> int:
        return self.cfg.runtime.valid_batch_size or max(self.cfg.data.batch_size, 8192)

    def _calibration(self) -> dict | None:
        """Platt parameters of the current weights on the validation split (None without one)."""
        if self.valid_data is None or len(self.valid_data) == 0:
            return None
        outputs = predict(
            self.model,
            self.valid_data,
            self._valid_batch_size(),
            max_batches=self.cfg.runtime.max_valid_steps,
        )
        return fit_calibration(outputs)

    # ------------------------------------------------------------------------------ result
    def _result(self, elapsed: float, valid_s: float, rows_seen: int) -> TrainResult:
        last_state = None
        if self.cfg.runtime.save_last:
            last_state = self._state()
            last_state["calibration"] = self._calibration()
        if self.best is None:
            # No validation split (or no AUC yet): the last weights are the best we have.
            self.best = {
                "step": self.step,
                "metrics": {},
                "pos_weight": self.pos_weights.current(self.step),
                "calibration": self._calibration(),
                "state_dict": _cpu_state(self.model),
            }
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.model_dump(mode="json", by_alias=True),
            "metadata": self.metadata,
            "model_meta": dataclasses.asdict(self.meta),
            "parameter_counts": self.param_counts,
            "best": self.best,
            "last": last_state,
        }
        train_rows = len(self.train_data)
        summary = {
            "steps": self.step,
            "epochs_equivalent": self.step / self.steps_per_epoch,
            "train_rows": train_rows,
            "seconds": elapsed,
            "validation_seconds": valid_s,
            # Training throughput of this run (validation excluded).
            "samples_per_s": rows_seen / max(elapsed - valid_s, 1e-9),
            "device": str(self.device),
            "amp_dtype": str(self.amp_dtype),
            "best_step": self.best["step"],
            "best_metrics": self.best["metrics"],
            "parameter_counts": self.param_counts,
        }
        if self.device.type == "cuda":
            summary["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(self.device)
        return TrainResult(checkpoint=checkpoint, history=self.history.frame(), summary=summary)


def checkpoint_ctr_pos_weight(checkpoint: dict, which: str, correct: bool) -> float:
    """The CTR pos_weight the ``which`` weights were trained with (1 when not correcting)."""
    entry = checkpoint.get(which) or {}
    return float((entry.get("pos_weight") or {}).get("ctr", 1.0)) if correct else 1.0


def checkpoint_calibration(checkpoint: dict, which: str, method: str) -> dict | None:
    """The Platt parameters stored with the ``which`` weights when ``method`` is ``platt``
    (None otherwise, or for a checkpoint that has none: the odds correction then applies)."""
    if method != "platt":
        return None
    return (checkpoint.get(which) or {}).get("calibration")


def model_from_checkpoint(checkpoint: dict, which: str = "best", device="cpu") -> torch.nn.Module:
    """Rebuild the model from a checkpoint alone (config + model meta + weights)."""
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
