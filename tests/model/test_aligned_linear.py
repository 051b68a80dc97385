"""AlignedLinear: nn.Linear's parameters and product, with the input width padded on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rec_pipeline.model.mlp import MLP, AlignedLinear


def test_it_is_a_linear_with_linears_state():
    torch.manual_seed(0)
    layer = AlignedLinear(13, 5)
    plain = nn.Linear(13, 5)
    plain.load_state_dict(layer.state_dict())  # the same keys and shapes
    x = torch.randn(4, 13)
    assert torch.equal(layer(x), plain(x))
    assert all(
        isinstance(m, AlignedLinear) for m in MLP(13, [8], out_dim=1) if isinstance(m, nn.Linear)
    )


def _reference(x, weight, bias, g, dtype):
    """Output and gradients (input, weight, bias) in float64 on the CPU, from the operands
    rounded to ``dtype`` as autocast rounds them (the bias and the sums stay exact)."""

    def leaf(t):
        return t.detach().cpu().to(dtype).double().requires_grad_()

    x, weight, bias = leaf(x), leaf(weight), bias.detach().cpu().double().requires_grad_()
    out = x @ weight.T + bias
    out.backward(g.cpu().to(dtype).double())
    return [out, x.grad, weight.grad, bias.grad]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("width", [299, 16])
def test_the_padded_product_and_its_gradients_are_the_definition_on_cuda(width):
    """The product and its gradients against float64 on the CPU, in fp32 (not padded) and
    under bf16 autocast (padded; its reference from bf16-rounded operands: what is left is the
    kernels' fp32 sums and the bf16 rounding of their results)."""
    gen = torch.Generator().manual_seed(1)
    layer = AlignedLinear(width, 7).cuda()
    x = torch.randn(33, width, generator=gen).cuda().requires_grad_()
    g = torch.randn(33, 7, generator=gen).cuda()
    for dtype, tol in ((torch.float32, 2e-3), (torch.bfloat16, 2e-2)):
        layer.zero_grad()
        x.grad = None
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out = layer(x)
        out.float().backward(g)
        assert out.shape == (33, 7)
        got = [out.float(), x.grad, layer.weight.grad, layer.bias.grad]
        ref = _reference(x, layer.weight, layer.bias, g, dtype)
        for t, r in zip(got, ref, strict=True):
            torch.testing.assert_close(t.cpu().double(), r.detach(), rtol=tol, atol=tol)
