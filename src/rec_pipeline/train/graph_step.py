"""The static training step (``runtime.step_mode: graph``): one CUDA graph replay per step.

An eager step launches some hundreds of small kernels, and at the seed's batch of 1,024 a GPU
spends the step waiting for them to be launched. Here the whole step (batch gather, forward,
losses, backward, the non-finite guard, clipping, both optimiser updates, the loss log) has fixed
shapes and never reads a value back to the host, so it is captured once as a CUDA graph and each
step is one ``replay()``. On the CPU the same step runs eagerly (the same maths, for tests).

What makes it static:

* batches: :class:`~rec_pipeline.data.static_batches.StaticBatches` (fixed B and value slots,
  gathered from a device-side counter); an epoch's short last batch runs the same step eagerly;
* optimisers: :mod:`~rec_pipeline.train.row_optimizers` (torch's sparse Adagrad / SparseAdam
  update without the coalescing sort; it also adds the ``embedding.l2_reg`` gradient, so the
  forward needs no ``unique``) and a capturable fused AdamW whose kernel runs over short pieces
  of the tensors (:class:`~rec_pipeline.train.pieces.PiecewiseAdamW`), learning rates in device
  tensors the schedulers fill; on one rank the bag pooling's backward adds the tables' gradients
  straight into the row optimiser's gradient sums (``bag_sums``' sinks), so no sparse ``[N, C]``
  gradient is made, the lookups' plan flags the rows they touch as it groups them into bags (and
  hands the optimiser its rows), and the guard checks the pooled embeddings' gradient
  ``[B, F, C]`` in its place (every table entry's gradient is a weighted sum of its entries);
* the positive weights live in a device tensor, refreshed from the host only when they change;
* the guard: the finite flags of the loss components, every gradient and every guarded parameter
  (norms of pieces of the dense tensors, a flag a piece) are combined on the device into the
  optimisers' ``found_inf``, so a step with a non-finite value changes no weight. The first step
  that must stop training, and the flags that name the culprits, are kept on the device; the
  host reads them at log, validation and save points (:meth:`GraphStep.poll`) and raises there.
  With ``on_nonfinite: stop`` every step after the first bad one is a no-op too, so the weights
  are those before it, as in the eager step.

With ``runtime.compile`` (``auto``: where Triton is installed) the objective between the bag
pooling and the backward (:meth:`GraphStep._objective`: the model's dense part, then the losses),
the row optimiser's updates and the static batch gather run through ``torch.compile``, so the
capture records a few fused kernels where the written code launches hundreds. They compile in
eager warm-up steps, before any capture: at the start, and when the value slots grow.

The CTCVR aux-focal term's warm-up is a 0/1 switch on the device (filled by the host like the
positive weights), so the term switching on changes no graph: one compilation and one capture
serve the whole run (a switch in the traced code would compile and capture a second time, 20 s
of compilation for Ali-CCP's model on an H200). The graph is captured again when the value slots
must grow for a later epoch. Not supported (refused with the key named, by the config): fp16
loss scaling, ``loss.pos_weight_dynamic``.

With several ranks (``runtime.devices``) the collectives are part of the captured step: the
ranks agree on one set of slot sizes per epoch, the dense gradients are averaged with one flat
all-reduce, the row optimiser exchanges only the rows the step touched
(:class:`~rec_pipeline.train.distributed.StaticExchange`), and the guard's flags are combined
over the ranks, so every rank skips or stops at the same step.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rec_pipeline.data.batches import Batch, BatchPlan
from rec_pipeline.data.static_batches import (
    StaticBatches,
    StaticSizes,
    full_batches,
    needed_sizes,
)
from rec_pipeline.model.builder import ModelOutput
from rec_pipeline.train.compiling import compile_wanted, compiled, warn_fallback
from rec_pipeline.train.distributed import StaticExchange
from rec_pipeline.train.losses import compute_losses, focal_active
from rec_pipeline.train.pieces import pieces
from rec_pipeline.train.precision import autocast
from rec_pipeline.train.row_optimizers import RowOptimizer

if TYPE_CHECKING:
    from rec_pipeline.train.loop import Trainer

log = logging.getLogger(__name__)

#: Prefix of the step's profiler ranges (``step.forward``, ``step.backward``, ...): what
#: ``benchmarks/profile_step.py`` counts kernels and device time by.
PHASE_PREFIX = "step."


def phase(name: str) -> torch.profiler.record_function:
    """A named range of the step for the profiler (host-side only: nothing in a graph)."""
    return torch.profiler.record_function(PHASE_PREFIX + name)


#: Eager steps (on a side stream) before the first capture: lazy initialisation (optimiser
#: state, library handles) must not happen inside a capture.
WARMUP_STEPS = 2


class GraphStep:
    """The static step of one :class:`~rec_pipeline.train.loop.Trainer` (module docstring)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = t = trainer
        dev = t.device
        self.capture = dev.type == "cuda"
        self.exchange = StaticExchange() if t.ranks is not None else None
        # The row optimiser's gradient sums, which the pooling's backward fills, and touched
        # flags, which the lookups' plan sets (one rank).
        self.sinks: list[Tensor] | None = None
        self.flags: list[Tensor] | None = None
        if isinstance(t.opt.sparse, RowOptimizer):
            t.opt.sparse.exchange = self.exchange
            if self.exchange is None:
                pairs = t.opt.sparse.grad_sinks()
                self.sinks, self.flags = [s for s, _ in pairs], [f for _, f in pairs]
        self.batches: StaticBatches | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0
        self.last_batch: Batch | None = None
        self.clip_norms: list[Tensor] = []  # the guard's norms of the clipped gradients
        # The static steps' objective compiled (``runtime.compile``): static shapes and the
        # aux-focal switch a tensor, so one compilation; the short last batch runs it as written.
        self.compile_mode = t.cfg.runtime.compile
        self.objective_fn = None
        if self.capture and compile_wanted(self.compile_mode):
            self.objective_fn = torch.compile(self._objective, dynamic=False)
            if isinstance(t.opt.sparse, RowOptimizer):
                t.opt.sparse.compile(fallback=self.compile_mode == "auto")
        self.pos_weight = torch.ones(2, device=dev)  # [ctr, ctcvr]
        self._pos_weight_host: tuple[float, float] | None = None
        # The aux-focal term's switch [] (0/1), or False where the term is never on.
        self.focal: Tensor | bool = torch.zeros((), device=dev)
        self._focal_host: bool | None = None
        if not t.cfg.loss.aux_focal.enabled:
            self.focal = False
        self.steps = torch.zeros((), dtype=torch.int64, device=dev)  # steps run
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=dev)
        self.skipped = torch.zeros((), dtype=torch.int64, device=dev)
        self.stop_on_any = t.cfg.runtime.on_nonfinite == "stop"
        # Allocated by the first (eager) step, when their lengths are known.
        self.window_sums: torch.Tensor | None = None  # [1 + C] loss sums of the log window
        self.window_n: torch.Tensor | None = None  # [] steps in them
        self.bad_flags: torch.Tensor | None = None  # [K] finite flags at the first bad step
        self.loss_names: list[str] = []
        self.flag_names: list[str] = []

    # -------------------------------------------------------------------------------- epochs

    def load(self, plan: BatchPlan, start: int) -> int:
        """Put an epoch's plan in the static buffers; returns how many batches are full."""
        bs = self.trainer.cfg.data.batch_size
        n_full = full_batches(plan, bs)
        if n_full <= start:
            return n_full
        sizes = needed_sizes(plan, bs, n_full)
        if self.exchange is not None:  # one shape on every rank: the collectives need it
            sizes = StaticSizes(*self.exchange.agreed_max(sizes.as_tuple(), self.trainer.device))
        b = self.batches
        if b is None or b.n_full != n_full or not b.sizes.holds(sizes):
            if b is not None:
                log.info("Static batch slots grow to %s: the step is captured again.", sizes)
            self.graph = None  # its buffers are about to be replaced
            self.warm = 0  # new shapes: compiled pieces compile again, outside a capture
            self.batches = StaticBatches(self.trainer.train_data, sizes, n_full)
            if self.objective_fn is not None:  # runtime.compile: the gather too
                fallback = self.compile_mode == "auto"
                gather = compiled(self.batches.gather, "the static batch gather", fallback)
                self.batches.gather = gather
        self.batches.load(plan, start)
        return n_full

    def run(self, batch: Batch | None = None) -> None:
        """One step: the next static batch (``batch`` None) or an ordinary batch, eagerly;
        then the learning-rate schedules' step (host maths, filling the rate tensors)."""
        self._refresh_pos_weight()
        self._refresh_focal()
        self._device_step(batch)
        self.trainer.scheds.step()

    def _device_step(self, batch: Batch | None) -> None:
        if batch is not None or not self.capture:
            self._body(batch)
            return
        if self.graph is None:
            if self.warm < WARMUP_STEPS:  # compiled (if at all) outside a capture
                self.warm += 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                start = time.perf_counter()
                with torch.cuda.stream(side):
                    self._warm_body()
                torch.cuda.current_stream().wait_stream(side)
                if self.warm == 1 and self.objective_fn is not None:
                    log.info(
                        "First static step, compiling the objective: %.1f s.",
                        time.perf_counter() - start,
                    )
                return
            self._capture()
        self.graph.replay()
        self.last_batch = self.batches.current

    def _warm_body(self) -> None:
        """An eager static step; where the objective is compiled (its first calls).

        With ``runtime.compile: auto`` a failure to compile is not fatal: the step gives its
        batch back and runs again with the objective as written (a warning says why)."""
        try:
            self._body(None)
        except Exception as err:
            if self.objective_fn is None or self.compile_mode != "auto":
                raise
            warn_fallback("the training objective", err)
            self.objective_fn = None
            self.batches.counter.sub_(1)  # the batch the failed step took
            self._body(None)

    def _capture(self) -> None:
        self.graph = None
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # the body sets the gradients to None first
            self._body(None)
        self.graph = graph
        log.info("Training step captured as a CUDA graph (%s).", self.batches.sizes)

    def release(self) -> None:
        """Free the captured graph now (the next static step captures it again)."""
        if self.graph is not None:
            self.graph.reset()
            self.graph = None

    # ---------------------------------------------------------------------------------- step

    def _refresh_pos_weight(self) -> None:
        t = self.trainer
        pw = t.pos_weights.current(t.step)
        host = (float(pw["ctr"]), float(pw["ctcvr"]))
        if host != self._pos_weight_host:
            self.pos_weight[0].fill_(host[0])
            self.pos_weight[1].fill_(host[1])
            self._pos_weight_host = host

    def _refresh_focal(self) -> None:
        if isinstance(self.focal, Tensor):
            on = focal_active(self.trainer.cfg, self.trainer.step)
            if on != self._focal_host:
                self.focal.fill_(float(on))
                self._focal_host = on

    def _body(self, batch: Batch | None) -> None:
        """The step's device work; ``batch`` None takes the next static batch."""
        t = self.trainer
        static = batch is None
        with phase("batch"):
            if static:
                batch = self.batches.next()
            self.last_batch = batch
            batch = t.oov_dropout(batch)
        with phase("forward"):
            plans = t.model.embedding.plan(batch, self.flags)
            with autocast(t.device, t.amp_dtype, cache=False):
                stacked = t.model.embedding.pool(
                    batch, self.sinks, plans
                )  # [B, F, D + L (+ 1) (+ D)]
            if self.sinks is not None:
                stacked.retain_grad()  # the guard's stand-in for the tables' gradients
            objective = self.objective_fn if static and self.objective_fn else self._objective
            total, names, values = objective(stacked, batch.click, batch.conversion, self.focal)
        with phase("backward"):
            t.opt.zero_grad()
            total.backward()
        with phase("exchange"):
            if t.exchange is not None:
                t.exchange.reduce_dense()
        with phase("guard"):
            # With the touched flags set by the plan, the optimiser needs only the rows.
            lookups = (
                [(plan.rows, None) for plan in plans]
                if self.flags is not None
                else t.model.embedding.lookups(batch, plans)
            )
            # Only the gradient is kept: the tensor would keep its graph, and with it the
            # tables' gradient accumulators, alive into the next step (and its capture).
            ok = self._guard(names, values, stacked.grad if self.sinks is not None else None)
            found_inf = (~ok).float()
        with phase("clip"):
            if t.cfg.runtime.grad_clip_norm:
                self._clip(t.cfg.runtime.grad_clip_norm)
        with phase("dense_optimizer"):
            t.opt.dense.found_inf = found_inf
            t.opt.dense.step()
        with phase("sparse_optimizer"):
            if isinstance(t.opt.sparse, RowOptimizer):
                t.opt.sparse.found_inf = found_inf
                t.opt.sparse.step(lookups, flagged=self.flags is not None, fixed_shapes=static)
        with phase("loss_log"):
            penalty = getattr(t.opt.sparse, "last_penalty", None)
            if penalty is not None:
                # The penalty's gradient is the row optimiser's, and so is its value (of the
                # rows before the update); it joins the loss log here.
                penalty = penalty.view(1)
                names = [*names, "loss_embedding_l2"]
                values = torch.cat([values[:1] + t.opt.sparse.l2 * penalty, values[1:], penalty])
            self.loss_names = names
            if self.window_sums is None:
                self.window_sums = torch.zeros_like(values)
                self.window_n = torch.zeros((), device=values.device)
            self.window_sums.add_(torch.where(ok, values, torch.zeros_like(values)))
            self.window_n.add_(ok.float())
            self.steps.add_(1)

    def _objective(
        self, stacked: Tensor, click: Tensor, conversion: Tensor, focal: Tensor | bool
    ) -> tuple[Tensor, list[str], Tensor]:
        """Everything between the bag pooling and the backward, with fixed shapes for a fixed B
        (what ``runtime.compile`` fuses): the model's dense part under autocast, then the fp32
        losses. ``stacked [B, F, D + L (+ 1) (+ D)]``, labels ``[B]``; returns the total to
        backpropagate, and the names and values ``[1 + C]`` of the total and its components."""
        t = self.trainer
        with autocast(t.device, t.amp_dtype, cache=False):
            logits, gates, _, _ = t.model.dense(stacked)
        out = ModelOutput(logits=logits, gates=gates, training=t.model.training)
        pw = {"ctr": self.pos_weight[0], "ctcvr": self.pos_weight[1]}
        res = compute_losses(out, click, conversion, focal=focal, cfg=t.cfg, pos_weight=pw)
        names, values = res.stacked()
        return res.total, names, values

    def _flags(
        self, values: Tensor, pooled_grad: Tensor | None
    ) -> tuple[list[str], Tensor, Tensor]:
        """(names, finite flags [K], which flags a skipped batch cannot excuse [K]).
        ``pooled_grad``: the pooled embeddings' gradient, when the tables' went to the sinks."""
        t = self.trainer
        params = [
            p
            for opt in t.opt.all()
            for group in opt.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        grads = [(f"gradient of {t.param_names[id(p)]}", p.grad) for p in params]
        if pooled_grad is not None:
            # The tables' gradients went to the sinks: each entry is a weighted sum of entries
            # of this one, so this one's norm flags them (a [B, F, C] read, not [N, C]).
            name = "gradient of the pooled embeddings (the embedding tables' gradients)"
            grads.append((name, pooled_grad))
        flags, names = [torch.isfinite(values)], []
        if grads:
            # A norm is finite iff every entry is (an fp32 overflow of the norm itself counts as
            # non-finite too): one fused read of every gradient, where isfinite().all() would
            # make several passes over the tables' [N, C] gradient values. A flag a piece.
            tensors = [g._values() if g.is_sparse else g for _, g in grads]
            # Pieces of the dense gradients only: their count must not change between steps,
            # and the sparse values' and pooled gradient's sizes change with the batch.
            vary = [i for i, (_, g) in enumerate(grads) if g.is_sparse or i >= len(params)]
            views, owner = pieces(tensors, whole=vary)
            norms = torch._foreach_norm(views)
            flags.append(torch.isfinite(torch.stack(norms)))
            names += [grads[i][0] for i in owner]
            # The clip's total norm is made of the same norms (see _clip).
            clipped = {id(p) for p in t.clip_params}
            self.clip_norms = [
                n
                for n, i in zip(norms, owner, strict=True)
                if i < len(params) and id(params[i]) in clipped
            ]
        n_fatal = 0
        if t.clip_params:
            with torch.no_grad():
                views, owner = pieces([p.detach() for p in t.clip_params])
                norms = torch.stack(torch._foreach_norm(views))
            flags.append(torch.isfinite(norms))
            names += [f"parameter {t.param_names[id(t.clip_params[i])]}" for i in owner]
            n_fatal = len(views)
        flag = torch.cat(flags)
        # The parameters' flags come last; a non-finite parameter cannot be skipped.
        fatal = torch.arange(flag.shape[0], device=flag.device) >= flag.shape[0] - n_fatal
        return names, flag, fatal

    def _clip(self, max_norm: float) -> None:
        """``clip_grad_norm_`` of the dense gradients, its total norm made of the norms the
        guard computed (:meth:`_flags`): one read of the gradients fewer."""
        grads = [p.grad for p in self.trainer.clip_params if p.grad is not None]
        if not grads:
            return
        total = torch.linalg.vector_norm(torch.stack(self.clip_norms))
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # as clip_grad_norm_
        torch._foreach_mul_(pieces(grads)[0], coef)

    def _guard(self, loss_names: list[str], values: Tensor, pooled_grad: Tensor | None) -> Tensor:
        """The step's ``ok`` (a device bool): apply the update. Records the first fatal step."""
        names, flag, fatal = self._flags(values, pooled_grad)
        if self.exchange is not None:  # every rank skips or stops at the same step
            flag = self.exchange.all_true(flag)
        self.flag_names = [f"loss {n}" for n in loss_names] + names
        if self.bad_flags is None:
            self.bad_flags = torch.ones_like(flag)
        bad = ~flag.all()
        stop_now = bad if self.stop_on_any else (~flag & fatal).any()
        first = (self.first_bad < 0) & stop_now
        self.first_bad.copy_(torch.where(first, self.steps, self.first_bad))
        self.bad_flags.copy_(torch.where(first, flag, self.bad_flags))
        ok = ~bad & (self.first_bad < 0)
        self.skipped.add_((bad & (self.first_bad < 0)).long())
        return ok

    # ----------------------------------------------------------------------------- host side

    def take_window(self) -> tuple[list[str], list[float]] | None:
        """The mean loss components of the steps since the last call (one host read)."""
        if self.window_sums is None:
            return None
        read = torch.cat([self.window_sums, self.window_n.view(1)])
        if self.exchange is not None:  # the mean over every rank's steps
            self.exchange.sum_(read)
        read = read.tolist()
        self.window_sums.zero_()
        self.window_n.zero_()
        *sums, n = read
        if n == 0:
            return None
        return self.loss_names, [v / n for v in sums]

    def poll(self, first_step: int) -> int:
        """Read the guard's record: raise for a stopping step, else return the batches skipped
        so far. ``first_step``: the trainer's step count when this step object started."""
        from rec_pipeline.train.loop import NonFiniteError

        first_bad, skipped = torch.stack([self.first_bad, self.skipped]).tolist()
        if first_bad < 0:
            return int(skipped)
        flags = self.bad_flags.tolist()
        # A tensor's pieces share its name: named once.
        culprits = list(
            dict.fromkeys(n for n, ok in zip(self.flag_names, flags, strict=True) if not ok)
        )
        fatal_param = any(n.startswith("parameter ") for n in culprits)
        why = "runtime.on_nonfinite: stop" if not fatal_param else "a parameter cannot be skipped"
        raise NonFiniteError(
            f"Non-finite values at step {first_step + int(first_bad) + 1}: "
            f"{', '.join(culprits[:6])}{' (+more)' if len(culprits) > 6 else ''}. No weight was "
            f"updated with them, nor at any later step; training stops ({why}). States and "
            "checkpoints saved before this step are intact."
        )
