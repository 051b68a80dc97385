"""``bag_sums``: weighted bag sums of table rows against a float64 loop, its three backwards
(sparse, dense, into a sink) against the forward's autograd, ``plan_bags`` against a loop over
the values, and the Triton kernels against the definitions on a GPU."""

from __future__ import annotations

import pytest
import torch

from rec_pipeline.model.bag_sums import bag_sums, plan_bags, resolve_kernel
from rec_pipeline.train.compiling import triton_available

ROWS, COLS = 40, 13


def _bags(seed: int, lengths: list[int], n_live: int, device="cpu", dtype=torch.float64):
    """A table ``[ROWS, COLS]`` and bags of the given lengths (some empty; the bags past
    ``n_live`` are padding), rows drawn skewed so that bags share rows."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    n = int(lens.sum())
    table = torch.randn(ROWS, COLS, generator=gen, dtype=dtype)
    rows = (torch.rand(n, generator=gen) ** 2 * ROWS).long()
    weights = torch.rand(n, generator=gen, dtype=dtype) * 3
    bag = torch.repeat_interleave(torch.arange(len(lengths)), lens)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    to = {"device": device}
    return table.to(**to), rows.to(**to), weights.to(**to), bag.to(**to), offsets.to(**to)


LENGTHS = [3, 0, 1, 70, 2, 0, 5, 33, 4, 9]  # the last two bags: padding
N_LIVE = 8


def _loop(table, rows, weights, offsets, n_live):
    """The definition, value by value."""
    sums = torch.zeros(n_live, table.shape[1], dtype=table.dtype)
    wsums = torch.zeros(n_live, dtype=table.dtype)
    for k in range(n_live):
        for i in range(int(offsets[k]), int(offsets[k + 1])):
            sums[k] += weights[i] * table[rows[i]]
            wsums[k] += weights[i]
    return sums, wsums


def test_the_sums_and_weight_sums_are_the_definition():
    table, rows, weights, bag, offsets = _bags(0, LENGTHS, N_LIVE)
    sums, wsums = bag_sums(table, rows, weights, bag, offsets, N_LIVE)
    ref_sums, ref_wsums = _loop(table, rows, weights, offsets, N_LIVE)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(wsums, ref_wsums, rtol=1e-12, atol=1e-12)
    assert not wsums.requires_grad


def _table_gradient(sparse: bool, with_sink: bool):
    """The table's gradient of ``sum(sums * g)``, from ``.grad`` or from a sink."""
    table, rows, weights, bag, offsets = _bags(1, LENGTHS, N_LIVE)
    table.requires_grad_(True)
    g = torch.randn(N_LIVE, COLS, generator=torch.Generator().manual_seed(2), dtype=table.dtype)
    sink = torch.zeros_like(table) if with_sink else None
    sums, _ = bag_sums(table, rows, weights, bag, offsets, N_LIVE, sink=sink, sparse=sparse)
    (sums * g).sum().backward()
    if with_sink:
        assert table.grad is None
        return sink
    assert table.grad.is_sparse == sparse
    return table.grad.to_dense()


def test_every_backward_is_the_gradient_of_the_definition():
    table, rows, weights, bag, offsets = _bags(1, LENGTHS, N_LIVE)
    table.requires_grad_(True)
    g = torch.randn(N_LIVE, COLS, generator=torch.Generator().manual_seed(2), dtype=table.dtype)
    (_loop(table, rows, weights, offsets, N_LIVE)[0] * g).sum().backward()
    for sparse, with_sink in ((True, False), (False, False), (True, True)):
        got = _table_gradient(sparse, with_sink)
        torch.testing.assert_close(got, table.grad, rtol=1e-12, atol=1e-12)


def test_a_sink_accumulates_over_backwards():
    once = _table_gradient(sparse=True, with_sink=True)
    table, rows, weights, bag, offsets = _bags(1, LENGTHS, N_LIVE)
    table.requires_grad_(True)
    g = torch.randn(N_LIVE, COLS, generator=torch.Generator().manual_seed(2), dtype=table.dtype)
    sink = torch.zeros_like(table)
    for _ in range(2):
        sums, _ = bag_sums(table, rows, weights, bag, offsets, N_LIVE, sink=sink)
        (sums * g).sum().backward()
    torch.testing.assert_close(sink, 2 * once)


def test_wrong_arguments_are_named():
    table, rows, weights, bag, offsets = _bags(0, LENGTHS, N_LIVE)
    with pytest.raises(ValueError, match="kernel"):
        bag_sums(table, rows, weights, bag, offsets, N_LIVE, kernel="cuda")
    with pytest.raises(ValueError, match="sink"):
        bag_sums(table, rows, weights, bag, offsets, N_LIVE, sink=torch.zeros(3, COLS))
    with pytest.raises(ValueError, match="pooling kernel"):
        resolve_kernel("fast")
    assert resolve_kernel("torch") == "torch"
    assert resolve_kernel("auto") == ("triton" if triton_available() else "torch")


@pytest.mark.skipif(
    not (torch.cuda.is_available() and triton_available()), reason="no CUDA device with Triton"
)
@pytest.mark.parametrize("lengths", [LENGTHS, [1] * 500 + [700, 0, 31, 32, 33, 64]])
def test_the_triton_kernels_equal_the_torch_ops_on_cuda(lengths):
    n_live = len(lengths) - 2
    table, rows, weights, bag, offsets = _bags(3, lengths, n_live, "cuda", torch.float32)
    g = torch.randn(n_live, COLS, device="cuda")
    out = {}
    for kernel in ("torch", "triton"):
        t = table.clone().requires_grad_(True)
        sink = torch.zeros_like(table)
        sums, wsums = bag_sums(t, rows, weights, bag, offsets, n_live, sink=sink, kernel=kernel)
        (sums * g).sum().backward()
        sums, _ = bag_sums(t, rows, weights, bag, offsets, n_live, kernel=kernel)  # sparse grad
        (sums * g).sum().backward()
        out[kernel] = (sums.detach(), wsums, sink, t.grad.to_dense())
    for got, ref in zip(out["triton"], out["torch"], strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def _side(seed: int, n_rows: int = 7, sizes=(5, 1, 9), pad: int = 6, device="cpu"):
    """One batch side's values: per-field ids, fields and batch rows grouped by (row, field),
    0-3 values per bag (some bags empty, one whole row empty), then ``pad`` padding values
    (row ``n_rows``); and the fields' row offsets in a table of ``sum(sizes)`` rows."""
    gen = torch.Generator().manual_seed(seed)
    ids, fields, rows = [], [], []
    for r in range(n_rows):
        for f, size in enumerate(sizes):
            n = 0 if r == 2 else int(torch.randint(0, 4, (1,), generator=gen))
            ids += torch.randint(0, size, (n,), generator=gen).tolist()
            fields += [f] * n
            rows += [r] * n
    ids += [0] * pad
    fields += torch.randint(0, len(sizes), (pad,), generator=gen).tolist()
    rows += [n_rows] * pad
    offset = torch.tensor([0, *torch.tensor(sizes).cumsum(0)[:-1].tolist()])
    to = {"dtype": torch.long, "device": device}
    return [torch.tensor(x, **to) for x in (ids, fields, rows)] + [offset.to(device)]


def _plan_loop(ids, fields, batch_rows, row_offset, n_rows):
    """The definition, value by value: table rows, the offsets of the real bags
    ``[n_rows * F + 1]``, the touched flags ``[R + 1]`` and the bags (``n_rows * F`` for
    padding)."""
    n_fields, table_rows = row_offset.shape[0], int(row_offset[-1]) + 100
    rows = [int(row_offset[f]) + int(i) for i, f in zip(ids, fields, strict=True)]
    bags = [int(r) * n_fields + int(f) for r, f in zip(batch_rows, fields, strict=True)]
    real = [int(r) < n_rows for r in batch_rows]
    offsets = [
        sum(b < k for b, ok in zip(bags, real, strict=True) if ok)
        for k in range(n_rows * n_fields + 1)
    ]
    flags = torch.zeros(table_rows + 1)
    for row, ok in zip(rows, real, strict=True):
        flags[row] = flags[row] or ok
    bags = [b if ok else n_rows * n_fields for b, ok in zip(bags, real, strict=True)]
    return torch.tensor(rows), torch.tensor(offsets), flags, torch.tensor(bags)


def test_the_torch_plan_is_the_definition():
    ids, fields, batch_rows, row_offset = _side(0)
    ref_rows, ref_offsets, ref_flags, ref_bags = _plan_loop(ids, fields, batch_rows, row_offset, 7)
    flags = torch.zeros_like(ref_flags)
    rows, offsets, bag = plan_bags(ids, fields, batch_rows, row_offset, 7, flags=flags)
    assert torch.equal(rows, ref_rows)
    n_real = 7 * 3
    assert torch.equal(offsets[: n_real + 1], ref_offsets)
    assert int(offsets[-1]) == ids.shape[0]  # padding bags past the real ones
    n_real_values = int(ref_offsets[-1])
    assert torch.equal(bag[:n_real_values], ref_bags[:n_real_values])
    assert (bag[int(ref_offsets[-1]) :] >= n_real).all()
    assert torch.equal(flags[:-1], ref_flags[:-1])  # the last entry takes the padding


@pytest.mark.skipif(
    not (torch.cuda.is_available() and triton_available()), reason="no CUDA device with Triton"
)
@pytest.mark.parametrize("pad", [0, 6, 3000])
@pytest.mark.parametrize("many_bags", [False, True])
def test_the_triton_plan_is_the_definition_on_cuda(pad, many_bags, monkeypatch):
    """Both searches for the offsets: 16 probes a step (few bags), and binary (many)."""
    from rec_pipeline.model import bag_kernels

    if many_bags:
        monkeypatch.setattr(bag_kernels, "MANY_BAGS", 1)
    ids, fields, batch_rows, row_offset = _side(1, n_rows=300, pad=pad, device="cuda")
    side = (t.cpu() for t in (ids, fields, batch_rows, row_offset))
    ref_rows, ref_offsets, ref_flags, ref_bags = _plan_loop(*side, 300)
    flags = torch.zeros_like(ref_flags, device="cuda")
    got = plan_bags(ids, fields, batch_rows, row_offset, 300, kernel="triton", flags=flags)
    for t, ref in zip((*got, flags), (ref_rows, ref_offsets, ref_bags, ref_flags), strict=True):
        assert torch.equal(t.cpu(), ref)


@pytest.mark.skipif(
    not (torch.cuda.is_available() and triton_available()), reason="no CUDA device with Triton"
)
def test_triton_plans_pool_and_backpropagate_as_torch_plans_on_cuda():
    """Bags, offsets and rows from either plan, pooled by either kernel: the same sums and the
    same gradients, sparse and into a sink (Triton's plan leaves the padding past the offsets)."""
    ids, fields, batch_rows, row_offset = _side(2, n_rows=300, pad=50, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    table = torch.randn(int(row_offset[-1]) + 9, COLS, device="cuda", generator=gen)
    weights = torch.rand(ids.shape[0], device="cuda", generator=gen)
    g = torch.randn(300 * 3, COLS, device="cuda", generator=gen)
    out = {}
    for kernel in ("torch", "triton"):
        rows, offsets, bag = plan_bags(ids, fields, batch_rows, row_offset, 300, kernel=kernel)
        t = table.clone().requires_grad_(True)
        sink = torch.zeros_like(table)
        sums, wsums = bag_sums(t, rows, weights, bag, offsets, 900, sink=sink, kernel=kernel)
        (sums * g).sum().backward()
        sums, _ = bag_sums(t, rows, weights, bag, offsets, 900, kernel=kernel)  # sparse grad
        (sums * g).sum().backward()
        out[kernel] = (sums.detach(), wsums, sink, t.grad.to_dense())
    for got, ref in zip(out["triton"], out["torch"], strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
