"""Weighted bag sums of table rows, with a backward that can sum straight into a row buffer.

Notation: N looked-up values, R table rows, C table columns, K bags (K_live of them read).

:func:`bag_sums` is what ``F.embedding_bag(mode="sum", per_sample_weights=w)`` computes, plus
each bag's weight sum, in one pass: ``sums[k] = sum_{i in bag k} w_i table[rows_i]`` and
``wsums[k] = sum_{i in bag k} w_i`` for the first ``K_live`` bags (a static batch's padding
values sit in bags past them, never read).

Its backward gives the table the same gradient as ``embedding_bag`` (``w_i grad[bag_i]`` for
each value, sparse COO or dense), or, given a ``sink`` (a ``[R, C]`` fp32 buffer, e.g. a row
optimiser's gradient sum), adds each value's contribution to its row of the sink and gives the
table no gradient at all. The sink saves what a sparse gradient costs: its ``[N, C]`` values
are written once and read back twice (the finite check and the optimiser's sum into rows),
where the sink's backward reads the ``[K, C]`` bag gradients and adds into rows directly.

Two implementations of the same maths: torch ops (any device; the reference), and Triton
kernels (CUDA; :mod:`rec_pipeline.model.bag_kernels`), which read each looked-up row once and
write the bags' sums without a ``[N, C]`` intermediate.

:func:`plan_bags` turns a batch side's values (per-field ids, field and batch row of each)
into what the pooling reads: table rows, bag offsets and each value's bag (and, for a row
optimiser, flags on the rows real values touch).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

KERNELS = ("torch", "triton")

#: Most padding values in one (discarded) bag of the torch plan: ``embedding_bag`` gives each
#: bag a thread block, so one bag of every padding value would serialise the whole padding.
PAD_BAG = 32


def resolve_kernel(requested: str) -> str:
    """``runtime.pooling_kernel`` to a kernel: ``auto`` is Triton where it is installed."""
    installed = importlib.util.find_spec("triton") is not None
    if requested == "auto":
        return "triton" if installed else "torch"
    if requested not in KERNELS:
        raise ValueError(f"pooling kernel must be 'auto', 'torch' or 'triton' (got {requested!r})")
    if requested == "triton" and not installed:
        raise ValueError("runtime.pooling_kernel: triton needs the triton package installed")
    return requested


def plan_bags(
    ids: Tensor,
    fields: Tensor,
    batch_rows: Tensor,
    row_offset: Tensor,
    n_rows: int,
    *,
    kernel: str = "torch",
    flags: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One side's lookups grouped into bags, one per (batch row, field) pair.

    Args:
        ids: ``[N]`` int64 per-field ids, grouped by (batch row, field) in that order.
        fields: ``[N]`` int64 field positions ``0..F-1``.
        batch_rows: ``[N]`` int64 batch rows; ``n_rows`` marks a static batch's padding, which
            comes after every real value.
        row_offset: ``[F]`` int64 first table row of each field.
        n_rows: real batch rows; bag ``row * F + field`` for ``row < n_rows``.
        kernel: ``"torch"`` or ``"triton"`` (CUDA tensors).
        flags: ``[R + 1]`` float: set to 1 at every row a real value looks up.

    Returns:
        rows ``[N]`` table rows; offsets ``[K + 1]`` with ``K >= n_rows * F`` bags (bags past
        ``n_rows * F`` hold padding, which Triton's plan leaves past ``offsets[K]``); bag
        ``[N]`` each value's bag.
    """
    n_fields = row_offset.shape[0]
    if kernel == "triton":
        from rec_pipeline.model.bag_kernels import bag_plan

        return bag_plan(ids, fields, batch_rows, row_offset, n_rows, flags)
    rows = ids + row_offset[fields]
    real = batch_rows < n_rows
    n_real = n_rows * n_fields
    position = torch.arange(ids.shape[0], device=ids.device)
    bag = torch.where(real, batch_rows * n_fields + fields, n_real + position // PAD_BAG)
    counts = torch.zeros(
        n_real + -(-ids.shape[0] // PAD_BAG) + 1, dtype=torch.long, device=ids.device
    )
    counts.index_add_(0, bag + 1, torch.ones_like(bag))
    if flags is not None:
        # Plain stores (every write is a 1); padding goes to the spare last entry.
        flags.index_put_((torch.where(real, rows, flags.shape[0] - 1),), flags.new_ones(()))
    return rows, counts.cumsum(0), bag


def _torch_forward(
    table: Tensor,
    rows: Tensor,
    weights: Tensor,
    bag: Tensor,
    offsets: Tensor,
    n_live: int,
    sparse: bool = True,
) -> tuple[Tensor, Tensor]:
    sums = F.embedding_bag(
        rows,
        table,
        offsets,
        mode="sum",
        per_sample_weights=weights,
        include_last_offset=True,
        sparse=sparse,
    )[:n_live]
    wsums = torch.zeros(offsets.shape[0] - 1, dtype=weights.dtype, device=weights.device)
    wsums.index_add_(0, bag, weights)
    return sums, wsums[:n_live]


def _value_grads(grad: Tensor, weights: Tensor, bag: Tensor, n_live: int) -> Tensor:
    """``[N, C]``: each value's share of its bag's gradient, 0 for values of unread bags."""
    live = bag < n_live
    w = torch.where(live, weights, torch.zeros_like(weights))
    return grad.index_select(0, bag.clamp_max(n_live - 1)) * w.unsqueeze(1)


class _BagSums(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, rows, weights, bag, offsets, n_live, sink, kernel, sparse):
        if kernel == "triton":
            from rec_pipeline.model.bag_kernels import bag_sums_forward

            sums, wsums = bag_sums_forward(table, rows, weights, offsets, n_live)
        else:
            sums, wsums = _torch_forward(table, rows, weights, bag, offsets, n_live)
        ctx.save_for_backward(rows, weights, bag, offsets)
        ctx.n_live, ctx.sink, ctx.kernel, ctx.sparse = n_live, sink, kernel, sparse
        ctx.table_shape, ctx.table_dtype = table.shape, table.dtype
        ctx.mark_non_differentiable(wsums)
        return sums, wsums

    @staticmethod
    def backward(ctx, grad, _grad_wsums):
        rows, weights, bag, offsets = ctx.saved_tensors
        grad = grad.to(torch.promote_types(grad.dtype, torch.float32)).contiguous()
        weights = weights.to(grad.dtype)
        nones = (None,) * 8
        if ctx.sink is not None:
            if ctx.kernel == "triton":
                from rec_pipeline.model.bag_kernels import bag_sums_backward_into

                bag_sums_backward_into(ctx.sink, grad, rows, weights, bag, ctx.n_live)
            else:
                values = _value_grads(grad, weights, bag, ctx.n_live)
                ctx.sink.index_add_(0, rows, values.to(ctx.sink.dtype))
            return (None, *nones)
        values = _value_grads(grad, weights, bag, ctx.n_live).to(ctx.table_dtype)
        if ctx.sparse:
            table_grad = torch.sparse_coo_tensor(
                rows.unsqueeze(0), values, ctx.table_shape, check_invariants=False
            )
        else:
            table_grad = torch.zeros(ctx.table_shape, dtype=ctx.table_dtype, device=grad.device)
            table_grad.index_add_(0, rows, values)
        return (table_grad, *nones)


def bag_sums(
    table: Tensor,
    rows: Tensor,
    weights: Tensor,
    bag: Tensor,
    offsets: Tensor,
    n_live: int,
    *,
    sink: Tensor | None = None,
    kernel: str = "torch",
    sparse: bool = True,
) -> tuple[Tensor, Tensor]:
    """Weighted bag sums of ``table`` rows and the bags' weight sums (module docstring).

    Args:
        table: ``[R, C]``.
        rows: ``[N]`` int64 table rows, grouped by bag (bag ``k``'s values are
            ``offsets[k]:offsets[k + 1]``).
        weights: ``[N]`` per-value weights, in the table's dtype (no gradient flows to them).
        bag: ``[N]`` int64 each value's bag (non-decreasing; ``>= K`` past ``offsets[K]``).
        offsets: ``[K + 1]`` int64 bag boundaries (``offsets[K] <= N``; later values are
            in no bag).
        n_live: bags ``0..n_live-1`` are computed and returned; values in later bags are
            looked up by no one (a static batch's padding).
        sink: ``[R, C]`` (fp32 for Triton): the backward adds the table's gradient here instead
            of returning it.
        kernel: ``"torch"`` or ``"triton"`` (CUDA tensors only).
        sparse: without a sink, return a sparse COO gradient (else a dense one).

    Returns:
        sums ``[n_live, C]`` in the table's dtype, wsums ``[n_live]`` (no gradient).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS} (got {kernel!r})")
    if sink is not None and (sink.shape != table.shape or not sink.dtype.is_floating_point):
        raise ValueError(f"sink must be a float tensor shaped like the table {tuple(table.shape)}")
    if sink is not None and kernel == "triton" and sink.dtype != torch.float32:
        raise ValueError("the triton kernel's sink must be fp32")
    if kernel == "torch" and sink is None:
        # embedding_bag's own backward makes the same gradient in fewer passes (the CPU path).
        return _torch_forward(table, rows, weights, bag, offsets, n_live, sparse)
    return _BagSums.apply(table, rows, weights, bag, offsets, n_live, sink, kernel, sparse)
