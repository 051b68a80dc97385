"""``bag_sums``: weighted bag sums of table rows against a float64 loop, its three backwards
(sparse, dense, into a sink) against the forward's autograd, and the Triton kernels against
the torch ops on a GPU."""

from __future__ import annotations

import pytest
import torch

from rec_pipeline.model.bag_sums import bag_sums, resolve_kernel
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
