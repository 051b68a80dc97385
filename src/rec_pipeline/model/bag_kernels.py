"""Triton kernels of :func:`rec_pipeline.model.bag_sums.bag_sums` (imported only where Triton is).

One program per bag (``K_live`` programs), ``BLOCK_N`` values at a time: the forward gathers
their rows ``[BLOCK_N, C]``, scales them by their weights and accumulates; the backward reads
the bag's gradient ``[C]`` once and adds ``w_i * grad`` to each value's row of the sink with
atomics (rows shared between bags, a popular item in many behaviour lists, add up correctly in
any order, as ``index_add_`` does). Empty bags cost one program that writes zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

#: Values per iteration of a bag's loop: most bags hold one value, behaviour lists hundreds.
BLOCK_N = 32


@triton.jit
def _forward_kernel(
    table, rows, weights, offsets, sums, wsums, C, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr
):
    bag = tl.program_id(0).to(tl.int64)
    start = tl.load(offsets + bag)
    end = tl.load(offsets + bag + 1)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    wacc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for s in tl.range(start, end, BLOCK_N):
        idx = s + tl.arange(0, BLOCK_N)
        live = idx < end
        r = tl.load(rows + idx, mask=live, other=0)
        w = tl.load(weights + idx, mask=live, other=0.0).to(tl.float32)
        e = tl.load(
            table + r[:, None] * C + cols[None, :],
            mask=live[:, None] & cmask[None, :],
            other=0.0,
        )
        acc += e.to(tl.float32) * w[:, None]
        wacc += w
    tl.store(sums + bag * C + cols, tl.sum(acc, axis=0).to(sums.dtype.element_ty), mask=cmask)
    tl.store(wsums + bag, tl.sum(wacc, axis=0).to(wsums.dtype.element_ty))


@triton.jit
def _backward_kernel(
    sink, grad, rows, weights, offsets, C, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr
):
    bag = tl.program_id(0).to(tl.int64)
    start = tl.load(offsets + bag)
    end = tl.load(offsets + bag + 1)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    g = tl.load(grad + bag * C + cols, mask=cmask, other=0.0)
    for s in tl.range(start, end, BLOCK_N):
        idx = s + tl.arange(0, BLOCK_N)
        live = idx < end
        r = tl.load(rows + idx, mask=live, other=0)
        w = tl.load(weights + idx, mask=live, other=0.0).to(tl.float32)
        tl.atomic_add(
            sink + r[:, None] * C + cols[None, :],
            w[:, None] * g[None, :],
            mask=live[:, None] & cmask[None, :],
            sem="relaxed",
        )


def _block_c(columns: int) -> int:
    return max(16, triton.next_power_of_2(columns))


def bag_sums_forward(
    table: Tensor, rows: Tensor, weights: Tensor, offsets: Tensor, n_live: int
) -> tuple[Tensor, Tensor]:
    """``sums [n_live, C]`` (the table's dtype) and ``wsums [n_live]`` (the weights')."""
    table = table.contiguous()
    columns = table.shape[1]
    sums = torch.empty(n_live, columns, dtype=table.dtype, device=table.device)
    wsums = torch.empty(n_live, dtype=weights.dtype, device=table.device)
    if n_live:
        _forward_kernel[(n_live,)](
            table, rows, weights, offsets, sums, wsums, columns,
            BLOCK_N=BLOCK_N, BLOCK_C=_block_c(columns), num_warps=2,
        )  # fmt: skip
    return sums, wsums


def bag_sums_backward_into(
    sink: Tensor, grad: Tensor, rows: Tensor, weights: Tensor, offsets: Tensor, n_live: int
) -> None:
    """Add ``weights[i] * grad[bag of i]`` to ``sink[rows[i]]`` for every value of the first
    ``n_live`` bags. ``sink [R, C]`` and ``grad [n_live, C]`` fp32, contiguous."""
    if n_live:
        _backward_kernel[(n_live,)](
            sink, grad, rows, weights, offsets, sink.shape[1],
            BLOCK_N=BLOCK_N, BLOCK_C=_block_c(sink.shape[1]), num_warps=2,
        )  # fmt: skip
