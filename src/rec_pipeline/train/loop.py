"""The training loop: steps, schedules, validation, best weights, periodic states, resume.

A step is: gather a batch (tensor ops, sizes known on the host), forward under autocast, fp32
losses, backward, one fused finite check (the step's single host read), clip, two optimiser
steps, two scheduler steps. Loss components are summed on the device and read back at log steps.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from rec_pipeline.config import Config
from rec_pipeline.data.batches import SplitData
from rec_pipeline.data.metadata import DatasetMetadata
from rec_pipeline.metrics.evaluate import flat_metrics
from rec_pipeline.model.builder import ModelMeta, build_model, parameter_counts
from rec_pipeline.train.checkpoint import (
    Checkpoint,
    RNGState,
    Snapshot,
    TrainingState,
    checkpoint_calibration,
    checkpoint_ctr_pos_weight,
    model_from_checkpoint,
)
from rec_pipeline.train.diagnostics import (
    health_metrics,
    task_gradient_stats,
    task_losses_for_diagnostics,
)
from rec_pipeline.train.distributed import (
    GradientExchange,
    Ranks,
    all_ranks_mean,
    broadcast_parameters,
)
from rec_pipeline.train.evaluation import (
    Correction,
    evaluate_model,
    fit_calibration,
    predict,
    summarise,
)
from rec_pipeline.train.graph_step import GraphStep
from rec_pipeline.train.losses import PosWeights, compute_losses
from rec_pipeline.train.oov_dropout import OOVDropout
from rec_pipeline.train.optim import build_optimizers
from rec_pipeline.train.precision import autocast, resolve_amp_dtype
from rec_pipeline.train.schedules import (
    build_lr_schedulers,
    resolve_step_fractions,
    resolve_total_steps,
)

log = logging.getLogger(__name__)

__all__ = [
    "NonFiniteError",
    "Trainer",
    "TrainResult",
    "checkpoint_calibration",
    "checkpoint_ctr_pos_weight",
    "model_from_checkpoint",
    "resolve_device",
]


class NonFiniteError(FloatingPointError):
    """A loss component, gradient or parameter became NaN or infinite (``on_nonfinite: stop``)."""


class StateStore(Protocol):
    """Where periodic training states go (the catalog's ``training_state``)."""

    def save(self, checkpoint: Checkpoint) -> None: ...

    def clear(self) -> None: ...


def resolve_device(requested: str) -> torch.device:
    """``cuda`` falls back to the CPU with a warning; ``auto`` picks CUDA when present."""
    if requested in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        log.warning("runtime.device is 'cuda' but no GPU is available: training on the CPU.")
    return torch.device("cpu")


def model_meta_from_metadata(metadata: DatasetMetadata) -> ModelMeta:
    """The model's view of the data: field order, table sizes, training positive rates."""
    return ModelMeta(
        skeleton_fields=metadata.names("skeleton"),
        common_fields=metadata.names("common"),
        vocab_sizes=metadata.vocab_sizes,
        prior_rates={
            "ctr": float(np.clip(metadata.rate("train", "ctr") or 0.05, 1e-6, 1 - 1e-6)),
            "cvr": float(np.clip(metadata.rate("train", "cvr") or 0.01, 1e-6, 1 - 1e-6)),
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
    checkpoint: dict  # Checkpoint.to_dict(): what the catalog's model_checkpoint saves
    history: pd.DataFrame
    summary: dict
    eval_metrics: dict | None = None
    eval_predictions: pd.DataFrame | None = None


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _grads_finite_flag(optimizers, device: torch.device) -> torch.Tensor:
    """One device bool: every gradient (dense or sparse) of these optimisers is finite."""
    grads = [
        p.grad._values() if p.grad.is_sparse else p.grad
        for opt in optimizers
        for group in opt.param_groups
        for p in group["params"]
        if p.grad is not None
    ]
    return _values_finite_flag(grads, device)


def _values_finite_flag(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """One device bool: every entry of these tensors is finite. One fused ``_foreach_norm`` (a
    norm is finite iff every entry is, short of an fp32 overflow of the norm itself, which is
    treated as non-finite too)."""
    if not tensors:
        return torch.tensor(True, device=device)
    with torch.no_grad():
        return torch.isfinite(torch.stack(torch._foreach_norm(tensors))).all()


def _nonfinite_names(named: list[tuple[str, torch.Tensor | None]]) -> list[str]:
    """Names whose tensor holds a NaN or an inf (the slow path, after a failed check)."""
    out = []
    for name, t in named:
        if t is None:
            continue
        values = t.coalesce().values() if t.is_sparse else t
        if not bool(torch.isfinite(values).all()):
            out.append(name)
    return out


def _listed(items: list[str], at_most: int = 4) -> str:
    more = f" (+{len(items) - at_most} more)" if len(items) > at_most else ""
    return ", ".join(items[:at_most]) + more


@dataclass
class _Clock:
    """Wall-clock bookkeeping of one ``fit`` call (throughput excludes validation and saves)."""

    t_start: float = field(default_factory=time.perf_counter)
    t_window: float = field(default_factory=time.perf_counter)
    rows_window: int = 0
    rows_seen: int = 0
    aside_s: float = 0.0  # validation and state saves

    def aside(self, seconds: float) -> None:
        self.aside_s += seconds
        self.t_window += seconds


class Trainer:
    """Trains the model of ``cfg`` on tensor-resident splits; :meth:`fit` returns a TrainResult.

    Steps run until ``runtime.epochs`` epochs or ``runtime.max_train_steps``; the LR schedule
    spans ``optim.lr_scheduler.total_steps`` (derived from the data when omitted). ``resume``
    is a checkpoint with a resumable state: training continues exactly where it stopped, on
    the original LR schedule unless ``runtime.resume_schedule: rederive``. ``state_store``
    receives a full resumable state every ``runtime.checkpoint_every`` steps.
    """

    def __init__(
        self,
        cfg: Config,
        metadata: DatasetMetadata | dict,
        train: SplitData,
        valid: SplitData | None,
        *,
        resume: dict | Checkpoint | None = None,
        state_store: StateStore | None = None,
        ranks: Ranks | None = None,
    ):
        metadata = DatasetMetadata.coerce(metadata)
        # Data-parallel: every rank runs this trainer on its share of each global batch; only
        # rank 0 validates, saves states and returns the result (train/distributed.py).
        self.ranks = ranks
        self.world = 1 if ranks is None else ranks.world
        self.is_main = ranks is None or ranks.is_main
        self.metadata, self.train_data, self.valid_data = metadata, train, valid
        self.device = train.device
        self.amp_dtype = resolve_amp_dtype(cfg, self.device)
        self.meta = model_meta_from_metadata(metadata)
        torch.manual_seed(cfg.runtime.seed)
        self.model = build_model(cfg, self.meta).to(self.device)
        static = self._static_step(cfg)
        if static:
            if self.amp_dtype == torch.float16:
                raise ValueError(
                    "runtime.step_mode 'graph' runs in fp32 or bf16: set runtime.amp_dtype to "
                    "bf16 (or runtime.amp: false) on a GPU without fp16-free AMP"
                )
            # The row optimiser adds the embedding L2 gradient: the forward needs no unique().
            self.model.embedding.touched_l2 = False
        self.opt = build_optimizers(self.model, cfg, static=static)
        self._set_guarded_parameters()
        self.exchange = self._join_ranks(cfg.runtime.seed)
        bs, n = cfg.data.batch_size, len(train) // self.world
        self.steps_per_epoch = n // bs if cfg.data.drop_last else math.ceil(n / bs)
        if self.steps_per_epoch == 0:
            raise ValueError(f"training split has {n} rows: fewer than one batch of {bs}")
        ckpt = None if resume is None else Checkpoint.from_dict(resume)
        self.total_steps = self._schedule_span(cfg, ckpt)
        # Step-valued keys given as fractions of the run become step counts from here on.
        self.cfg = cfg = resolve_step_fractions(cfg, self.total_steps)
        self.stop_step = cfg.runtime.epochs * self.steps_per_epoch
        if cfg.runtime.max_train_steps:
            self.stop_step = min(self.stop_step, cfg.runtime.max_train_steps)
        self.scheds = build_lr_schedulers(self.opt.dense, self.opt.sparse, cfg, self.total_steps)
        self.pos_weights = PosWeights(cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.history = History()
        self.step, self.nonfinite_skipped = 0, 0
        self._validated_at = -(10**18)  # the step of the last validation
        self.best: Snapshot | None = None
        self._window_sums: torch.Tensor | None = None  # loss sums of the log interval, on device
        self._window_n = 0
        self._loss_names: list[str] = []
        self.keep_prob = metadata.neg_keep_prob_train
        self.checkpoint_every = int(cfg.runtime.checkpoint_every or 0)
        self.state_store = state_store if self.checkpoint_every else None
        if ckpt is not None:
            self._restore(ckpt)
        elif self.state_store is not None:
            self.state_store.clear()  # states of an earlier run must not be resumed into this one
        self.param_counts = parameter_counts(self.model)
        self.oov_dropout = OOVDropout(
            cfg.embedding.oov_dropout,
            self.meta.skeleton_fields,
            self.meta.common_fields,
            self.device,
        )
        self.graph = GraphStep(self) if static else None
        self._graph_start = self.step  # the step count when the static step began
        self._log_plan()

    def _static_step(self, cfg: Config) -> bool:
        """Whether this run takes the static step (``runtime.step_mode``; ``auto``: on GPUs, or
        on the CPU in one process, when the settings allow it, in bf16 or fp32). On the CPU it
        runs without a graph, and is faster than the eager step for the same maths: no sort of
        the sparse gradients or of the looked-up rows (``make run``'s training, 2-core VM: 219
        s against 291 s)."""
        mode = cfg.runtime.step_mode
        if mode != "auto":
            return mode == "graph"
        return (
            (self.device.type == "cuda" or self.ranks is None)
            and self.amp_dtype != torch.float16
            and not cfg.static_step_blockers()
        )

    def _log_plan(self) -> None:
        counts = self.param_counts
        log.info(
            "Model: %s parameters (%s dense). Device %s, AMP %s, %s step, %d steps/epoch, "
            "stop at %d, LR schedule over %d steps.",
            f"{counts['total']:,}",
            f"{counts['dense_total']:,}",
            self.device,
            self.amp_dtype,
            "static (CUDA graph)"
            if self.graph is not None and self.graph.capture
            else ("static" if self.graph is not None else "eager"),
            self.steps_per_epoch,
            self.stop_step,
            self.total_steps,
        )

    def _join_ranks(self, seed: int) -> GradientExchange | None:
        """With several ranks: one set of initial weights, dropout and gate noise of each rank's
        own, and the gradient exchange every step."""
        if self.ranks is None:
            return None
        broadcast_parameters(self.model)
        torch.manual_seed(seed + self.ranks.rank)
        sparse = self.model.embedding.sparse_parameters()
        ids = {id(p) for p in sparse}
        dense = [p for p in self.model.parameters() if id(p) not in ids]
        return GradientExchange(dense, sparse)

    def _set_guarded_parameters(self) -> None:
        """Which parameters ``grad_clip_norm`` clips and the finite check reads every step.

        Both are the non-embedding parameters, whichever optimiser holds the tables
        (``embedding.sparse_grad`` true or false): the tables' gradients are a few rows of a
        large table, and reading whole tables every step would cost more than the step.
        """
        tables = {id(p) for p in self.model.embedding.tables()}
        self.param_names = {id(p): name for name, p in self.model.named_parameters()}
        self.clip_params = [
            p for p in self.opt.dense.param_groups[0]["params"] if id(p) not in tables
        ]

    # ------------------------------------------------------------------------------- state
    def _schedule_span(self, cfg: Config, ckpt: Checkpoint | None) -> int:
        """The LR schedule's span: the resumed run's own with ``resume_schedule: continue``."""
        derived = resolve_total_steps(cfg, self.steps_per_epoch)
        saved = None if ckpt is None or ckpt.state is None else ckpt.state.schedule_total_steps
        if saved is None or cfg.runtime.resume_schedule == "rederive":
            return derived
        if saved != derived:
            log.info(
                "Resuming on the original LR schedule over %d steps (this run's settings give "
                "%d; runtime.resume_schedule: rederive uses those).",
                saved,
                derived,
            )
        return int(saved)

    def _training_state(self) -> TrainingState:
        sums = self._window_sums
        return TrainingState(
            step=self.step,
            steps_per_epoch=self.steps_per_epoch,
            schedule_total_steps=self.total_steps,
            optimizers=self.opt.state_dict(),
            schedulers=self.scheds.state_dict(),
            pos_weights=self.pos_weights.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=RNGState.capture(self.device),
            history=list(self.history.rows),
            log_window={"sums": None if sums is None else sums.cpu(), "count": self._window_n},
            nonfinite_skipped=self.nonfinite_skipped,
        )

    def _snapshot(self, calibration: dict | None, metrics: dict | None = None) -> Snapshot:
        return Snapshot(
            step=self.step,
            state_dict=_cpu_state(self.model),
            metrics=metrics or {},
            pos_weight=self.pos_weights.current(self.step),
            calibration=calibration,
        )

    def _checkpoint(self, last: Snapshot | None, state: TrainingState | None) -> Checkpoint:
        return Checkpoint(
            config=self.cfg.model_dump(mode="json", by_alias=True),
            metadata=self.metadata.to_dict(),
            model_meta=dataclasses.asdict(self.meta),
            parameter_counts=self.param_counts,
            best=self.best,
            last=last,
            state=state,
        )

    def _restore(self, ckpt: Checkpoint) -> None:
        state = ckpt.state
        if state is None or ckpt.last is None:
            raise ValueError(
                "resume: the checkpoint has no resumable state (train it with "
                "runtime.save_last: true or runtime.checkpoint_every)"
            )
        if state.steps_per_epoch not in (None, self.steps_per_epoch):
            raise ValueError(
                f"resume: the state was saved with {state.steps_per_epoch} steps per epoch, this "
                f"run has {self.steps_per_epoch}: the training data or batch size changed"
            )
        self.model.load_state_dict(ckpt.last.state_dict)
        self.opt.load_state_dict(state.optimizers)
        self.scheds.load_state_dict(state.schedulers)
        if self.cfg.runtime.resume_schedule == "rederive":
            self.scheds.sync_lr()
        self.pos_weights.load_state_dict(state.pos_weights)
        self.scaler.load_state_dict(state.scaler)
        state.rng.restore(self.device)
        self.history.rows = list(state.history)
        valid_steps = [r["step"] for r in self.history.rows if r["kind"] == "valid"]
        self._validated_at = max(valid_steps, default=self._validated_at)
        self.best = ckpt.best
        self.step, self.nonfinite_skipped = state.step, state.nonfinite_skipped
        if state.log_window.get("sums") is not None:
            self._window_sums = state.log_window["sums"].to(self.device)
            self._window_n = int(state.log_window["count"])
        epoch, batch = divmod(self.step, self.steps_per_epoch)
        log.info("Resumed at step %d (epoch %d, after batch %d of it).", self.step, epoch, batch)

    def _save_state(self, clock: _Clock) -> None:
        t0 = time.perf_counter()
        state = self._training_state()
        self.state_store.save(self._checkpoint(self._snapshot(None), state))
        clock.aside(time.perf_counter() - t0)
        log.info("Training state saved at step %d.", self.step)

    # ---------------------------------------------------------------------------- training
    def fit(self) -> TrainResult:
        try:
            return self._fit()
        finally:
            if self.graph is not None:
                # A captured graph that holds collectives keeps their NCCL communicator alive:
                # the process group could not be torn down while it exists.
                self.graph.release()

    def _fit(self) -> TrainResult:
        cfg, rt = self.cfg, self.cfg.runtime
        bar = tqdm(
            total=self.stop_step,
            initial=self.step,
            disable=not rt.progress_bar,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
        )
        clock = _Clock()
        self.model.train()
        while self.step < self.stop_step:
            # The row order of an epoch depends on (seed, epoch) only: a resumed run skips the
            # batches of its epoch already trained on and sees the same order after them.
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            plan = self.train_data.epoch_plan(
                cfg.data.batch_size,
                shuffle=True,
                generator=np.random.default_rng([rt.seed, epoch]),
                drop_last=cfg.data.drop_last,
                shard=(0, 1) if self.ranks is None else (self.ranks.rank, self.world),
            )
            n_static = 0 if self.graph is None else self.graph.load(plan, skip)
            for i in range(skip, len(plan)):
                if self.step >= self.stop_step:
                    break
                if i < n_static:
                    self.graph.run()
                    self._bookkeep(None, cfg.data.batch_size, clock, bar)
                    continue
                batch = self.train_data.planned_batch(plan, i)
                if self.graph is not None:
                    self.graph.run(batch)
                    self._bookkeep(None, batch.size, clock, bar)
                else:
                    self._bookkeep(self._train_step(batch), batch.size, clock, bar)
        bar.close()
        self._poll_graph()
        return self._result(clock)

    def _bookkeep(self, values: torch.Tensor | None, rows: int, clock: _Clock, bar) -> None:
        """After a step of ``rows`` rows: its loss values (eager step), logs, validation, states."""
        rt = self.cfg.runtime
        if self.graph is not None:
            self._graph_diagnostics()
        if values is not None:
            self._window_sums = values if self._window_sums is None else self._window_sums + values
            self._window_n += 1
        clock.rows_window += rows * self.world  # every rank trains on a batch
        clock.rows_seen += rows * self.world
        self.step += 1
        bar.update(1)
        if self.step % rt.log_every == 0 or self.step == self.stop_step:
            self._log_window(clock, bar)
        end_of_epoch = self.step % self.steps_per_epoch == 0
        every, near = self.cfg.valid_every, self.cfg.valid_every // 2
        # Epoch ends and the last step always validate. A scheduled validation within half an
        # interval of one (after or before it) would score nearly the same weights: skipped.
        forced = min(-(-self.step // self.steps_per_epoch) * self.steps_per_epoch, self.stop_step)
        scheduled = (
            self.step % every == 0
            and self.step - self._validated_at >= near
            and forced - self.step >= near
        )
        due = scheduled or end_of_epoch or self.step == self.stop_step
        if due and self.is_main:  # on all validation rows: one rank, global metrics
            self._validated_at = self.step
            self._drain()
            t_valid = time.perf_counter()
            self._validate()
            clock.aside(time.perf_counter() - t_valid)
        periodic = self.state_store is not None and self.step % self.checkpoint_every == 0
        if periodic and self.step < self.stop_step:
            self._drain()
            self._save_state(clock)

    def _drain(self) -> None:
        """Wait for the steps queued on the device before time is set aside (validation, state
        saves): the aside holds none of their work, so the window's samples/s counts all of
        it. (Timed without it, windows with a validation read a sixth faster at full size.)"""
        self._poll_graph()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _poll_graph(self) -> None:
        """The static step's guard record: raises for a stopping step; counts skipped batches."""
        if self.graph is None:
            return
        skipped = self.graph.poll(self._graph_start)
        if skipped != self.nonfinite_skipped:
            log.warning(
                "Non-finite values: %d batches skipped so far, no update from them "
                "(runtime.on_nonfinite: skip_batch).",
                skipped,
            )
            self.nonfinite_skipped = skipped
            self.history.add(self.step, "nonfinite", {"skipped_batches": skipped})

    def _graph_diagnostics(self) -> None:
        """Gradient diagnostics and health rows of the static step's batch (when due), from a
        forward of their own after the step (the captured step computes neither)."""
        if not any(self._diagnostics_due()):
            return
        batch = self.graph.last_batch
        with autocast(self.device, self.amp_dtype):
            out = self.model(batch)
        pw = self.pos_weights.current(self.step)
        res = compute_losses(
            out, batch.click, batch.conversion, step=self.step, cfg=self.cfg, pos_weight=pw
        )
        self._diagnostics(batch, out, res)

    def _log_window(self, clock: _Clock, bar) -> None:
        means: dict[str, float] = {}
        if self.graph is not None:
            self._poll_graph()
            window = self.graph.take_window()
            if window is not None:
                means = dict(zip(*window, strict=True))
        elif self._window_n:
            window = self._window_sums / self._window_n
            if self.exchange is not None:  # the mean over every rank's batches
                window = all_ranks_mean(window)
            sums = window.tolist()
            means = dict(zip(self._loss_names, sums, strict=True))
        dt = time.perf_counter() - clock.t_window
        means["samples_per_s"] = clock.rows_window / max(dt, 1e-9)
        means.update(self._schedule_values())
        self.history.add(self.step, "train", means)
        nan = float("nan")
        bar.set_postfix(
            loss=f"{means.get('loss_total', nan):.4f}", sps=f"{means['samples_per_s']:,.0f}"
        )
        log.info(
            "step %d/%d loss %.5f (ctr %.4f ctcvr %.4f) lr %.2e %.0f samples/s",
            self.step,
            self.stop_step,
            means.get("loss_total", nan),
            means.get("loss_ctr", nan),
            means.get("loss_ctcvr", means.get("loss_cvr", nan)),
            means["lr_dense"],
            means["samples_per_s"],
        )
        self._window_sums, self._window_n, clock.rows_window = None, 0, 0
        clock.t_window = time.perf_counter()

    def _schedule_values(self) -> dict[str, float]:
        out = {"lr_dense": float(self.opt.dense.param_groups[0]["lr"])}
        if self.opt.sparse is not None:
            out["lr_sparse"] = float(self.opt.sparse.param_groups[0]["lr"])
        for task, w in self.pos_weights.current(self.step).items():
            out[f"pos_weight_{task}"] = w
        return out

    def _train_step(self, batch) -> torch.Tensor | None:
        """One optimisation step; the stacked loss components, or None for a skipped batch."""
        cfg = self.cfg
        batch = self.oov_dropout(batch)
        with autocast(self.device, self.amp_dtype):
            out = self.model(batch)
        self.pos_weights.observe(batch.click, batch.conversion)
        pw = self.pos_weights.current(self.step)
        res = compute_losses(
            out, batch.click, batch.conversion, step=self.step, cfg=cfg, pos_weight=pw
        )
        self._diagnostics(batch, out, res)
        self.opt.zero_grad()
        self.scaler.scale(res.total).backward()
        if self.exchange is not None:
            self.exchange.all_reduce()
        # One stacked vector per step: one add per step, one device read per log line.
        self._loss_names, values = res.stacked()
        updated = self._apply_gradients(values, self._loss_names)
        self.scheds.step()
        return values if updated else None

    def _diagnostics_due(self) -> tuple[bool, bool]:
        """(gradient diagnostics, health metrics) due at this step."""
        cfg, rt = self.cfg, self.cfg.runtime
        diag = rt.grad_diag_enabled and self.step % cfg.grad_diag_every == 0
        diag = diag and len(cfg.model.tasks) >= rt.grad_diag_min_tasks
        return diag, rt.log_health_metrics and (self.step + 1) % rt.log_every == 0

    def _diagnostics(self, batch, out, res) -> None:
        diag, health = self._diagnostics_due()
        if diag:
            stats = task_gradient_stats(
                self.model, task_losses_for_diagnostics(res.components, self.cfg)
            )
            self.history.add_rows(self.step, "grad", stats)
        if health:
            with torch.no_grad():
                self.history.add_rows(
                    self.step + 1, "health", health_metrics(out, batch.click, batch.conversion)
                )

    def _apply_gradients(
        self, losses: torch.Tensor | None = None, loss_names: list[str] | None = None
    ) -> bool:
        """Check, clip and step both optimisers through the GradScaler; False for a batch
        skipped by ``runtime.on_nonfinite: skip_batch``.

        One fused check per step (the step's only host read) covers the loss components, every
        gradient and the non-embedding parameters. With fp16 loss scaling (the scaler is
        enabled) both optimisers' gradients are unscaled first, and an inf or NaN gradient is
        the scaler's overflow: both optimisers skip the step together and the scaler lowers its
        scale (SparseAdam must never step on scaled or overflowed embedding gradients). bf16
        and fp32 need no scaling: the scaler is a no-op, and a non-finite gradient is an error.
        """
        rt, scaled = self.cfg.runtime, self.scaler.is_enabled()
        if scaled:
            for opt in self.opt.all():
                self.scaler.unscale_(opt)
        dev = self.device
        no_losses = torch.tensor(True, device=dev)
        flags = torch.stack(
            [
                no_losses if losses is None else torch.isfinite(losses).all(),
                _grads_finite_flag(self.opt.all(), dev),
                _values_finite_flag(self.clip_params, dev),
            ]
        )
        losses_ok, grads_ok, params_ok = flags.tolist()
        if not (losses_ok and params_ok and (grads_ok or scaled)):
            self._nonfinite(losses, loss_names, grads_ok or scaled, params_ok)
            self.scaler.update()
            return False
        if rt.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(self.clip_params, rt.grad_clip_norm)
        if grads_ok:
            for opt in self.opt.all():
                self.scaler.step(opt)
        self.scaler.update()
        return True

    def _nonfinite(
        self, losses: torch.Tensor | None, names: list[str] | None, grads_ok: bool, params_ok
    ) -> None:
        """Name what is non-finite at this step, then stop or count a skipped batch."""
        found: dict[str, list[str]] = {}
        if losses is not None:
            vals = losses.tolist()
            found["loss"] = [n for n, v in zip(names, vals, strict=True) if not math.isfinite(v)]
        if not grads_ok:
            params = [p for opt in self.opt.all() for g in opt.param_groups for p in g["params"]]
            found["gradient of"] = _nonfinite_names(
                [(self.param_names[id(p)], p.grad) for p in params]
            )
        if not params_ok:
            found["parameter"] = _nonfinite_names(
                [(self.param_names[id(p)], p.detach()) for p in self.clip_params]
            )
        shown = "; ".join(f"{kind} {_listed(items)}" for kind, items in found.items() if items)
        msg = f"Non-finite values at step {self.step + 1}: {shown}"
        if self.cfg.runtime.on_nonfinite == "stop" or not params_ok:
            why = "runtime.on_nonfinite: stop" if params_ok else "a parameter cannot be skipped"
            raise NonFiniteError(
                f"{msg}. No weight was updated with them; training stops ({why}). "
                "States and checkpoints saved before this step are intact."
            )
        self.nonfinite_skipped += 1
        self.history.add(self.step + 1, "nonfinite", {"skipped_batches": self.nonfinite_skipped})
        log.warning(
            "%s: batch skipped, no update (runtime.on_nonfinite: skip_batch; %d skipped).",
            msg,
            self.nonfinite_skipped,
        )

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
        key = self.cfg.runtime.best_metric
        score = flat.get(key)
        best = None if self.best is None else self.best.metrics.get(key)
        if score is not None and (best is None or score > best):
            self.best = self._snapshot(fit_calibration(result.outputs), flat)

    def _valid_batch_size(self) -> int:
        """``runtime.valid_batch_size``, else the evaluation's batch on a GPU (8,192 rows leave
        it waiting for kernel launches: 2.8M rows/s against 10.1M at 65,536 on an H200) and
        8,192 on a CPU (where 65,536 measured 45 % slower); never below the training batch."""
        rt = self.cfg.runtime
        if rt.valid_batch_size:
            return rt.valid_batch_size
        rows = self.cfg.evaluation.batch_size if self.device.type == "cuda" else 8192
        return max(self.cfg.data.batch_size, rows)

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
    def _result(self, clock: _Clock) -> TrainResult | None:
        """The checkpoint, history and summary (rank 0's; the other ranks return None)."""
        elapsed = time.perf_counter() - clock.t_start
        if not self.is_main:
            return None
        last = state = None
        if self.cfg.runtime.save_last:
            state = self._training_state()
            last = self._snapshot(self._calibration())
        if self.best is None:
            # No validation split (or no AUC yet): the last weights are the best we have.
            valid = self.valid_data
            if valid is not None and len(valid):
                log.warning(
                    "No validation gave an %s (runtime.best_metric; the validation split has %d "
                    "rows, %d clicks, %d conversions: a task without positives has no AUC), so "
                    "the last weights are kept as the best; a larger data.valid_fraction gives "
                    "validation more rows.",
                    self.cfg.runtime.best_metric,
                    len(valid),
                    int(valid.click_host.sum()),
                    int(valid.conversion_host.sum()),
                )
            self.best = self._snapshot(self._calibration())
        checkpoint = self._checkpoint(last, state)
        summary = {
            "steps": self.step,
            "epochs_equivalent": self.step / self.steps_per_epoch,
            "train_rows": len(self.train_data),
            "seconds": elapsed,
            "validation_seconds": clock.aside_s,
            # Training throughput of this run (validation and state saves excluded).
            "samples_per_s": clock.rows_seen / max(elapsed - clock.aside_s, 1e-9),
            "device": str(self.device),
            "amp_dtype": str(self.amp_dtype),
            "best_step": self.best.step,
            "best_metrics": self.best.metrics,
            "parameter_counts": self.param_counts,
            "nonfinite_skipped_batches": self.nonfinite_skipped,
            "devices": self.world,
        }
        if self.device.type == "cuda":
            summary["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(self.device)
        return TrainResult(
            checkpoint=checkpoint.to_dict(), history=self.history.frame(), summary=summary
        )
