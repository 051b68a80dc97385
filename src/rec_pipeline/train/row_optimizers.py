"""Row-wise optimisers for embedding tables: SparseAdam's and sparse Adagrad's updates, in
place, with static shapes.

``torch.optim.SparseAdam`` (and ``Adagrad`` on a sparse gradient) coalesces each step's
gradient (a sort whose output size depends on the data), so it cannot run inside a CUDA graph
and costs a host synchronisation. :class:`RowOptimizer` makes the same update from a fixed-size
list of touched rows instead:

1. the step's gradient entries (uncoalesced COO of the table, any order, duplicates allowed)
   are summed into a persistent ``[rows, C]`` buffer with ``index_add_`` (or were added there
   by the backward: gradient sinks, below), and the rows real lookups touched are flagged;
2. every touched row (the lookups of the batch, ``[N]`` with duplicates, and a 0/1 mask
   marking the real ones: padding entries of a static batch count for nothing) reads its
   summed gradient and its state, computes the new values, and writes them back; duplicates
   of a row compute identical values, so the duplicated writes are harmless;
3. the buffer rows it read are zeroed for the next step.

When a batch's lookups outnumber the table's rows (large batches, long behaviour lists), the
same update runs as masked elementwise passes over the whole table instead, which move fewer
bytes than gathers and scatters of every lookup.

The update of a touched row (``g`` its summed gradient, ``t`` the step count):

* :class:`RowAdam` (``optim.sparse.type: adam``), ``torch.optim.SparseAdam``'s::

    m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
    p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

* :class:`RowAdagrad` (``optim.sparse.type: adagrad``), ``torch.optim.Adagrad``'s on a sparse
  gradient (no rate decay)::

    s <- s + g^2;   p <- p - lr g / (sqrt(s) + eps)

  A row's steps shrink with the squared gradients it has accumulated, so a frequent id settles
  while a rare one keeps large steps; Adam's normalised step is about ``lr`` for every row.

Rows that no real lookup touched are left alone, like the coalesced sparse updates leave rows
outside the gradient. Two additions:

* ``l2``: the gradient of ``l2 * sum of squares of the distinct touched rows`` (the embedding
  L2 penalty of docs/model.md) is added to ``g`` here, so the forward needs no ``unique``; the
  penalty's value (of the rows before the update, for the loss log) is
  :attr:`~RowOptimizer.last_penalty`, computed from the rows and touch counts the update reads.
* gradient sinks (:meth:`~RowOptimizer.grad_sinks`): the ``[rows, C]`` buffers and the flags
  of step 1. A backward that adds a table's gradient into its buffer directly (``bag_sums``'
  sink) leaves the table's ``.grad`` empty, and the step starts from the sums; lookups that
  flag their rows as they go (``FusedFieldEmbedding.plan``) spare the step its flag stores.
* ``found_inf`` (attribute, a 0-d float tensor, like the fused optimisers read it): when 1 the
  step changes nothing, not even the step count (the non-finite guard without a host read).
* ``exchange`` (attribute, a :class:`~rec_pipeline.train.distributed.StaticExchange`, with
  several ranks): the gradient becomes the mean over the ranks and the touched rows their union,
  so every rank applies the same update. Only touched rows move: the per-lookup layout gathers
  every rank's lookups and gradient entries (``N`` each), the whole-table layout (chosen when
  the ranks' lookups together outnumber the table's rows) sums the ``[rows, C]`` buffer.

Every op has a shape fixed by ``N``: no host synchronisation, capturable in a CUDA graph, and
compilable (:meth:`~RowOptimizer.compile`, used by ``runtime.compile``) into a few fused
kernels. The state has torch's keys and shapes (SparseAdam's ``step``, ``exp_avg``,
``exp_avg_sq``; Adagrad's ``step``, ``sum``), so a state saved by either form of a rule loads
into the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.optim import Optimizer

from rec_pipeline.train.compiling import compiled

if TYPE_CHECKING:
    from rec_pipeline.train.distributed import StaticExchange

#: Passes over ``[N, C]`` (per lookup) and over ``[rows, C]`` (whole table) of the two layouts
#: of Adam's update, counted from their ops: which moves fewer bytes for a given N and table.
LOOKUP_PASSES = 14
TABLE_PASSES = 10


def _acc(p: Tensor) -> torch.dtype:
    """The dtype the update is computed in: fp32, or the table's own when wider."""
    return torch.promote_types(p.dtype, torch.float32)


class RowOptimizer(Optimizer):
    """A row-wise update over explicitly listed touched rows (see the module docstring).

    Subclasses name their per-row state (:attr:`STATE`, zero-initialised unless
    :meth:`_initial` says otherwise) and give the step size and the update rule.

    Call :meth:`step` with one ``(rows, mask)`` pair per parameter, in ``params`` order:
    ``rows`` int64 ``[N]`` the table rows the batch looked up, ``mask`` float ``[N]`` 1 for a
    real lookup and 0 for padding.
    """

    #: The per-row state tensors, each shaped like the table ``[rows, C]``.
    STATE: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict, l2: float = 0.0) -> None:
        if not float(defaults["lr"]) >= 0.0:
            raise ValueError(f"invalid learning rate {defaults['lr']}")
        if not defaults["eps"] >= 0.0:
            raise ValueError(f"invalid epsilon {defaults['eps']}")
        super().__init__(params, defaults)
        self.l2 = float(l2)
        self.found_inf: Tensor | None = None
        self.exchange: StaticExchange | None = None
        # Per table: the summed gradient ``[rows, C]`` and a touched flag per row ``[rows + 1]``
        # (the last entry takes the padding's writes), zero between steps; and, for the
        # penalty of the per-lookup layout, the lookup that last wrote each row ``[rows + 1]``.
        self._grad_sum: dict[int, Tensor] = {}
        self._touches: dict[int, Tensor] = {}
        self._writer: dict[int, Tensor] = {}
        #: ``[]`` fp32 after each step with ``l2 > 0``: the penalty's value (module docstring).
        self.last_penalty: Tensor | None = None
        # After :meth:`compile`: the updates as written, for lookups of other shapes.
        self._as_written: dict[str, Callable] = {}

    # ------------------------------------------------------------------ what a rule defines

    def _initial(self, p: Tensor, group: dict, name: str) -> Tensor:
        """A fresh state tensor ``name`` for table ``p``: zeros."""
        return torch.zeros_like(p)

    def _step_size(self, group: dict, step: Tensor) -> Tensor | float:
        """The step's scalar factor of the update (``[]``), from the new step count."""
        raise NotImplementedError

    def _rule(
        self, param: Tensor, g: Tensor, states: list[Tensor], size: Tensor, group: dict
    ) -> tuple[Tensor, list[Tensor]]:
        """New values of the rows ``param`` ``[R, C]`` and of their states, from their summed
        gradient ``g`` ``[R, C]`` (computed in :func:`_acc`'s dtype; pure, no in-place ops)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the shared machinery

    def compile(self, *, fallback: bool) -> None:
        """Run the per-table updates through ``torch.compile``: their dozens
        of small ops become a few fused kernels. Shapes are fixed by ``N`` and the table, so
        each table and layout compiles once; call them outside a CUDA graph capture first.
        ``fallback``: a compilation that fails warns and runs the method as written from then
        on (nothing has run when a compilation fails), instead of raising."""
        what = type(self).__name__
        for name in ("_update_rows", "_update_table"):
            self._as_written[name] = getattr(self, name)
            setattr(self, name, compiled(getattr(self, name), f"{what}.{name}", fallback))

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _state(self, p: Tensor, group: dict) -> dict:
        state = self.state[p]
        for name in self.STATE:
            if name not in state:
                state[name] = self._initial(p, group, name)
        step = state.get("step", 0)
        if not torch.is_tensor(step) or step.device != p.device or step.dtype != torch.float64:
            # A float64 tensor on the table's device: the step count never leaves the device,
            # and the bias corrections computed from it are as exact as torch's.
            state["step"] = torch.tensor(float(step), dtype=torch.float64, device=p.device)
        return state

    def _buffers(self, p: Tensor) -> tuple[Tensor, Tensor]:
        key = id(p)
        if key not in self._grad_sum:
            self._grad_sum[key] = torch.zeros_like(p, dtype=_acc(p))
            self._touches[key] = torch.zeros(p.shape[0] + 1, dtype=_acc(p), device=p.device)
            self._writer[key] = torch.zeros(p.shape[0] + 1, dtype=torch.int64, device=p.device)
        return self._grad_sum[key], self._touches[key]

    def prepare(self) -> None:
        """Create the state and buffers now (before a CUDA graph capture allocates anything)."""
        for group in self.param_groups:
            for p in group["params"]:
                self._state(p, group)
                self._buffers(p)

    def grad_sinks(self) -> list[tuple[Tensor, Tensor]]:
        """Each table's gradient-sum buffer ``[rows, C]`` and touched flags ``[rows + 1]``
        (``params`` order), zero between steps: a backward may add the table's gradient to the
        sums instead of into ``.grad``, and the lookups may set the flags of the rows real
        values touch (then step with ``flagged=True``). One rank only (the exchange sends
        gradient entries, which a sink no longer has)."""
        if self.exchange is not None:
            raise ValueError("gradient sinks need one rank: the exchange reads gradient entries")
        return [self._buffers(p) for p in self._params()]

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        lookups: Sequence[tuple[Tensor, Tensor | None]],
        *,
        flagged: bool = False,
        fixed_shapes: bool = True,
    ) -> None:
        """One update of every table from its ``(rows [N], mask [N])`` lookups (mask 1 for a
        real value). ``flagged``: the touched flags of :meth:`grad_sinks` are set already; the
        masks may then be None (the flags tell the touched rows). ``fixed_shapes`` False: the
        lookups are not of the static step's shapes (an epoch's short last batch), so the
        updates run as written even after :meth:`compile`, where each new ``N`` would compile
        them anew (a compilation at every epoch's end)."""
        params = self._params()
        if len(lookups) != len(params):
            raise ValueError(f"{type(self).__name__}.step needs {len(params)} (rows, mask) pairs")
        ok = None if self.found_inf is None else 1.0 - self.found_inf  # [] 1 = apply
        pairs = iter(lookups)
        penalty = None
        for group in self.param_groups:
            for p in group["params"]:
                rows, mask = next(pairs)
                if mask is None and not flagged:
                    raise ValueError("lookups without a mask need the touched flags set")
                mask = mask.to(_acc(p)) if mask is not None else None
                part = self._update(p, group, rows, mask, ok, flagged, fixed_shapes)
                penalty = part if penalty is None else penalty + part
        self.last_penalty = penalty.float() if self.l2 > 0 else None

    def _update(
        self, p: Tensor, group: dict, rows: Tensor, mask: Tensor, ok, flagged, fixed_shapes: bool
    ) -> Tensor:
        """Update one table; returns the sum of squares of its distinct touched rows (before)."""
        written = {} if fixed_shapes else self._as_written
        update_table = written.get("_update_table", self._update_table)
        update_rows = written.get("_update_rows", self._update_rows)
        state = self._state(p, group)
        grad_sum, touches = self._buffers(p)
        idx, vals = self._entries(p)
        ex = self.exchange
        # Same update, two layouts: per lookup (gathers and scatters of [N, C]) or over the
        # whole table, masked (elementwise passes over [rows, C]); the cheaper one by bytes.
        n = rows.shape[0] if ex is None else ex.longest(rows.shape[0], p.device) * ex.world
        whole_table = p.shape[0] * TABLE_PASSES < n * LOOKUP_PASSES
        if ex is not None:
            vals = vals / ex.world  # the mean over the ranks, as the dense gradients
            if not whole_table:
                (idx, vals), (rows, mask) = ex.gather(idx, vals), ex.gather(rows, mask)
        # Uncoalesced: every lookup's entry, summed per row by index_add_ (no sort). A gradient
        # sink has summed them already (and left .grad empty).
        if p.grad is not None or ex is not None:
            grad_sum.index_add_(0, idx, vals.to(grad_sum.dtype))
        if not flagged:
            # Flags written by plain stores (every write is a 1): an index_add of counts would
            # serialise on the atomics of popular rows (0.9 ms at batch 16,384).
            real = torch.where(mask > 0, rows, p.shape[0])  # [N]; padding -> the spare entry
            touches.index_put_((real,), touches.new_ones(()))
        if ex is not None and whole_table:
            ex.sum_(grad_sum)
            ex.sum_(touches)
        step = state["step"] + (1.0 if ok is None else ok)  # [] float
        size = self._step_size(group, step)
        states = [state[name] for name in self.STATE]
        if whole_table:
            squares = update_table(p, states, grad_sum, touches, size, group, ok)
        else:
            first = None
            if self.l2 > 0:
                # The penalty counts each touched row once; the flags (set by now, here or by
                # the lookups) tell which lookups are of touched rows.
                first = self._first_writes(p, torch.where(touches[rows] > 0, rows, p.shape[0]))
            squares = update_rows(p, states, grad_sum, touches, rows, first, size, group, ok)
        state["step"].copy_(step)
        return squares

    def _entries(self, p: Tensor) -> tuple[Tensor, Tensor]:
        """The gradient's entries (rows [n], values [n, C]); empty when the table has none."""
        if p.grad is None:
            return torch.zeros(0, dtype=torch.int64, device=p.device), p.new_zeros((0, p.shape[1]))
        if not p.grad.is_sparse:
            raise ValueError(
                f"{type(self).__name__} needs sparse gradients (embedding.sparse_grad: true)"
            )
        return p.grad._indices()[0], p.grad._values()

    def _first_writes(self, p: Tensor, real: Tensor) -> Tensor:
        """``[N]`` 1 for one real lookup of each distinct touched row (whichever wrote last),
        else 0: the per-lookup layout's penalty counts each row once."""
        writer = self._writer[id(p)]
        order = torch.arange(real.shape[0], device=real.device)
        writer.index_put_((real,), order)
        return ((writer[real] == order) & (real < p.shape[0])).to(_acc(p))

    def _squares(self, terms: Tensor) -> Tensor:
        """The penalty's part ``[]``: the sum of ``terms``, computed only when ``l2 > 0``."""
        return terms.sum() if self.l2 > 0 else terms.new_zeros(())

    def _update_table(self, p, states, grad_sum, touches, size, group, ok) -> Tensor:
        """The update as masked elementwise passes over the whole table ``[rows, C]``; returns
        the sum of squares of the touched rows before it (``[]``)."""
        seen = (touches[:-1] > 0).unsqueeze(1)  # [rows, 1]
        touched = seen if ok is None else seen & (ok > 0)
        param = p.to(grad_sum.dtype)
        squares = self._squares(torch.where(seen, param * param, param.new_zeros(())))
        # Masked by selection, not by a 0 factor: a skipped step's gradient may hold NaN.
        g = torch.where(touched, grad_sum, grad_sum.new_zeros(()))
        if self.l2 > 0:
            g = g + (2.0 * self.l2) * param
        new_p, new_states = self._rule(param, g, states, size, group)
        for old, new in zip(states, new_states, strict=True):
            old.copy_(torch.where(touched, new, old))
        p.copy_(torch.where(touched, new_p, param).to(p.dtype))
        grad_sum.zero_()
        touches.zero_()
        return squares

    def _update_rows(self, p, states, grad_sum, touches, rows, first, size, group, ok) -> Tensor:
        """The update per lookup: gathers of the touched rows, scatters of their new values;
        returns the sum of squares of the distinct touched rows before it (``[]``: the lookups
        ``first`` marks, one per distinct row; 0 without ``first``, when ``l2`` is 0)."""
        apply = touches[rows] > 0  # [N] a real lookup touched this row
        if ok is not None:
            apply = apply & (ok > 0)
        apply = apply.unsqueeze(1)  # [N, 1]
        param = p[rows].to(grad_sum.dtype)  # [N, C]
        squares = (
            self._squares(param.pow(2) * first.unsqueeze(1))
            if first is not None
            else param.new_zeros(())
        )
        g = grad_sum[rows]
        if self.l2 > 0:
            g = g + (2.0 * self.l2) * param
        olds = [s[rows] for s in states]
        new_p, new_states = self._rule(param, g, olds, size, group)
        p.index_copy_(0, rows, torch.where(apply, new_p, param).to(p.dtype))
        for s, old, new in zip(states, olds, new_states, strict=True):
            s.index_copy_(0, rows, torch.where(apply, new, old))
        grad_sum.index_fill_(0, rows, 0.0)
        touches.index_fill_(0, rows, 0.0)
        return squares


class RowAdam(RowOptimizer):
    """``torch.optim.SparseAdam``'s update, row-wise (module docstring).

    Args:
        params: the embedding tables (``[rows, C]`` each), with sparse gradients.
        lr: learning rate (a float, or a 0-d tensor a scheduler fills in place).
        betas, eps: as in SparseAdam.
        l2: coefficient of the touched-rows L2 penalty whose gradient the step adds.
    """

    STATE = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        l2: float = 0.0,
    ) -> None:
        for i, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"invalid beta parameter at index {i}: {b}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps}, l2)

    def _step_size(self, group: dict, step: Tensor) -> Tensor:
        b1, b2 = group["betas"]
        safe_step = step.clamp_min(1.0)
        return group["lr"] * torch.sqrt(1.0 - b2**safe_step) / (1.0 - b1**safe_step)

    def _rule(self, param, g, states, size, group):
        b1, b2 = group["betas"]
        m_old, v_old = states
        m = m_old + (g - m_old) * (1.0 - b1)
        v = v_old + (g * g - v_old) * (1.0 - b2)
        return param - size * m / (v.sqrt() + group["eps"]), [m, v]


class RowAdagrad(RowOptimizer):
    """``torch.optim.Adagrad``'s update of a sparse gradient, row-wise (module docstring).

    Args:
        params: the embedding tables (``[rows, C]`` each), with sparse gradients.
        lr: learning rate (a float, or a 0-d tensor a scheduler fills in place).
        eps: added to the root of the accumulated squares, as in Adagrad.
        initial_accumulator_value: the accumulated squares' start (Adagrad's).
        l2: coefficient of the touched-rows L2 penalty whose gradient the step adds.
    """

    STATE = ("sum",)

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        eps: float = 1e-10,
        initial_accumulator_value: float = 0.0,
        l2: float = 0.0,
    ) -> None:
        if not initial_accumulator_value >= 0.0:
            raise ValueError(f"invalid initial_accumulator_value {initial_accumulator_value}")
        defaults = {"lr": lr, "eps": eps, "initial_accumulator_value": initial_accumulator_value}
        super().__init__(params, defaults, l2)

    def _initial(self, p: Tensor, group: dict, name: str) -> Tensor:
        return torch.full_like(p, group["initial_accumulator_value"])

    def _step_size(self, group: dict, step: Tensor) -> Tensor | float:
        return group["lr"]

    def _rule(self, param, g, states, size, group):
        (s_old,) = states
        s = s_old + g * g
        return param - size * g / (s.sqrt() + group["eps"]), [s]
