"""Triton kernels of :mod:`rec_pipeline.model.bag_sums` (imported only where Triton is).

The plan (:func:`bag_plan`): one pass over the values, ``PLAN_BLOCK`` at a time, that adds each
field's row offset to its ids, writes each value's bag and, when asked, flags the rows the real
values touch; then the offsets, one search per bag over the values' bags (sorted, as the values
are grouped by bag), which finds empty bags' offsets too: a 17-way search (16 loads a step,
issued together) where the bags are few and the chain of dependent loads bounds it, a binary one
where they are many and the loads themselves do. No atomics and no scan: the counts'
``index_add_`` serialised on long behaviour lists, and a suffix-minimum scan over the bags ran
as one thread block (1 ms at batch 16,384). A flag is stored only where it still reads 0: a
behaviour list's popular items are looked up thousands of times a batch, and stores to one
address serialise where loads hit the cache.

The forward: ``BAGS`` bags per program, one after the other, ``BLOCK_N`` values at a time: it
gathers their rows ``[BLOCK_N, C]``, scales them by their weights and accumulates. Short bags
(a side of one-id fields) take 4 bags of 16 values per one-warp program, long ones (behaviour
lists) one bag of 32 per two-warp program: measured on world2's batches of 16,384.

The backward: one program per ``BLOCK_V`` values, each adding ``w_i * grad[bag_i]`` to its
row of the sink with atomics (rows shared between bags, a popular item in many behaviour lists,
add up correctly in any order, as ``index_add_`` does). Every value costs the same, so one-id
bags no longer cost a program each (3x faster on them); on long lists it is as fast as a
program per bag, at the atomics' throughput (the same number of atomics to distinct rows takes
as long).

The integer arguments that change from batch to batch (value and row counts) are not
specialised on, so an evaluation's varying batches reuse one compilation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

#: Values per program of the plan.
PLAN_BLOCK = 1024
#: Values per program of the backward.
BLOCK_V = 128
#: Bags per program of the offsets' search.
OFFSETS_BLOCK = 128
#: Loads a step of the search per bag: 16 with fewer bags than ``MANY_BAGS``, else 1.
PROBES = 16
#: With this many bags a batch's searches fill the GPU, and the 16 loads a step of the 17-way
#: search cost more than its shorter chain saves (world2, batch 16,384: the offsets took 99 us
#: with 16 probes, 64 us with 1; at batch 1,024, 24 us against 36 us).
MANY_BAGS = 1 << 15


@triton.jit(do_not_specialize=["N", "n_rows"])
def _rows_kernel(
    ids, fields, batch_rows, row_offset, rows, bags, flags, N, n_rows, n_fields,
    HAS_FLAGS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < N
    f = tl.load(fields + i, mask=live, other=0)
    r = tl.load(batch_rows + i, mask=live, other=0)
    row = tl.load(ids + i, mask=live, other=0) + tl.load(row_offset + f, mask=live, other=0)
    real = r < n_rows
    tl.store(rows + i, row, mask=live)
    # Padding values (row n_rows, after every real one) all go to bag n_rows * F.
    tl.store(bags + i, tl.where(real, r * n_fields + f, n_rows * n_fields), mask=live)
    if HAS_FLAGS:
        unset = tl.load(flags + row, mask=live & real, other=1.0) == 0.0
        tl.store(flags + row, 1.0, mask=live & real & unset)


@triton.jit(do_not_specialize=["N", "n_bags", "steps"])
def _offsets_kernel(
    bags, offsets, N, n_bags, steps, BLOCK: tl.constexpr, PROBES: tl.constexpr
):  # fmt: skip
    # offsets[k] = the first value whose bag is >= k, in [lo, hi]: a search of the (sorted)
    # bags with PROBES loads a step, issued together, so the chain of dependent loads is
    # log_(PROBES + 1) N long where a binary search's is log_2 N (its latency, not bandwidth,
    # bounds this kernel).
    k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = k <= n_bags
    j = tl.arange(0, PROBES)
    lo = tl.zeros([BLOCK], dtype=tl.int64)
    hi = tl.zeros([BLOCK], dtype=tl.int64) + N
    for _ in range(steps):
        span = hi - lo
        at = lo[:, None] + (span[:, None] * (j[None, :] + 1)) // (PROBES + 1)  # [BLOCK, PROBES]
        searching = (live & (span > 0))[:, None] & (j >= 0)[None, :]  # [BLOCK, PROBES]
        below = (tl.load(bags + at, mask=searching, other=0) < k[:, None]) & searching
        n_below = tl.sum(below.to(tl.int32), axis=1)  # the probes before the answer
        last_below = tl.max(tl.where(below, at, -1), axis=1)
        first_above = tl.min(tl.where(searching & ~below, at, hi[:, None]), axis=1)
        lo = tl.where(n_below > 0, last_below + 1, lo)
        hi = tl.where(live & (span > 0), first_above, hi)
    tl.store(offsets + k, lo, mask=live)


@triton.jit(do_not_specialize=["n_live"])
def _forward_kernel(
    table, rows, weights, offsets, sums, wsums, C, n_live,
    BAGS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    for j in tl.static_range(BAGS):
        bag = tl.program_id(0).to(tl.int64) * BAGS + j
        if bag < n_live:
            start = tl.load(offsets + bag)
            end = tl.load(offsets + bag + 1)
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
            out = tl.sum(acc, axis=0).to(sums.dtype.element_ty)
            tl.store(sums + bag * C + cols, out, mask=cmask)
            tl.store(wsums + bag, tl.sum(wacc, axis=0).to(wsums.dtype.element_ty))


@triton.jit(do_not_specialize=["N", "n_live"])
def _backward_kernel(
    sink, grad, rows, weights, bags, N, C, n_live, BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr
):
    i = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    bag = tl.load(bags + i, mask=i < N, other=n_live)
    live = bag < n_live
    r = tl.load(rows + i, mask=live, other=0)
    w = tl.load(weights + i, mask=live, other=0.0).to(tl.float32)
    cols = tl.arange(0, BLOCK_C)
    m = live[:, None] & (cols < C)[None, :]
    g = tl.load(grad + bag[:, None] * C + cols[None, :], mask=m, other=0.0)
    tl.atomic_add(sink + r[:, None] * C + cols[None, :], w[:, None] * g, mask=m, sem="relaxed")


def _search_steps(n: int, probes: int) -> int:
    """Steps of ``_offsets_kernel`` that leave no span: each step shrinks a span ``s`` to at most
    ``ceil(s / (probes + 1))``, and a span of ``probes`` or less to 0."""
    steps, span = 1, n
    while span > probes:
        span = -(-span // (probes + 1))
        steps += 1
    return steps


def _block_c(columns: int) -> int:
    return max(16, triton.next_power_of_2(columns))


def bag_plan(
    ids: Tensor,
    fields: Tensor,
    batch_rows: Tensor,
    row_offset: Tensor,
    n_rows: int,
    flags: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Table rows ``[N]``, bag offsets ``[n_rows * F + 1]`` and each value's bag ``[N]`` of one
    side's values (see :func:`rec_pipeline.model.bag_sums.plan_bags`); padding values lie past
    the last offset, in bag ``n_rows * F``."""
    n, n_fields = ids.shape[0], row_offset.shape[0]
    n_bags = n_rows * n_fields
    rows = torch.empty(n, dtype=torch.int64, device=ids.device)
    bags = torch.empty(n, dtype=torch.int64, device=ids.device)
    offsets = torch.empty(n_bags + 1, dtype=torch.int64, device=ids.device)
    if n:
        _rows_kernel[(triton.cdiv(n, PLAN_BLOCK),)](
            ids, fields, batch_rows, row_offset, rows, bags,
            flags if flags is not None else rows, n, n_rows, n_fields,
            HAS_FLAGS=flags is not None, BLOCK=PLAN_BLOCK, num_warps=4,
        )  # fmt: skip
    probes = PROBES if n_bags + 1 < MANY_BAGS else 1
    _offsets_kernel[(triton.cdiv(n_bags + 1, OFFSETS_BLOCK),)](
        bags, offsets, n, n_bags, _search_steps(n, probes), BLOCK=OFFSETS_BLOCK, PROBES=probes,
        num_warps=4,
    )  # fmt: skip
    return rows, offsets, bags


def bag_sums_forward(
    table: Tensor, rows: Tensor, weights: Tensor, offsets: Tensor, n_live: int
) -> tuple[Tensor, Tensor]:
    """``sums [n_live, C]`` (the table's dtype) and ``wsums [n_live]`` (the weights')."""
    table = table.contiguous()
    columns = table.shape[1]
    sums = torch.empty(n_live, columns, dtype=table.dtype, device=table.device)
    wsums = torch.empty(n_live, dtype=weights.dtype, device=table.device)
    if n_live:
        # Short bags: several to a one-warp program; long ones: a two-warp program each.
        short = rows.shape[0] <= 2 * n_live
        bags, block_n, warps = (4, 16, 1) if short else (1, 32, 2)
        _forward_kernel[(triton.cdiv(n_live, bags),)](
            table, rows, weights, offsets, sums, wsums, columns, n_live,
            BAGS=bags, BLOCK_N=block_n, BLOCK_C=_block_c(columns), num_warps=warps,
        )  # fmt: skip
    return sums, wsums


def bag_sums_backward_into(
    sink: Tensor, grad: Tensor, rows: Tensor, weights: Tensor, bag: Tensor, n_live: int
) -> None:
    """Add ``weights[i] * grad[bag[i]]`` to ``sink[rows[i]]`` for every value of the first
    ``n_live`` bags. ``sink [R, C]`` and ``grad [n_live, C]`` fp32, contiguous."""
    n = rows.shape[0]
    if n and n_live:
        _backward_kernel[(triton.cdiv(n, BLOCK_V),)](
            sink, grad, rows, weights, bag, n, sink.shape[1], n_live,
            BLOCK_V=BLOCK_V, BLOCK_C=_block_c(sink.shape[1]), num_warps=4,
        )  # fmt: skip
