"""The fused AdamW over pieces of its tensors against torch's own AdamW, and the pieces."""

from __future__ import annotations

import pytest
import torch

from rec_pipeline.train.pieces import PiecewiseAdamW, adamw_step, pieces

SHAPES = [(7, 5), (3,), (40,), (2, 3, 4)]


def test_pieces_are_views_that_cover_each_tensor_in_order():
    a, b = torch.arange(10.0), torch.arange(6.0).view(2, 3).t()  # b is not contiguous
    views, owner = pieces([a, b], size=4)
    assert owner == [0, 0, 0, 1]
    assert [v.numel() for v in views] == [4, 4, 2, 6]
    assert torch.equal(torch.cat([v.reshape(-1) for v in views[:3]]), a)
    views[1].fill_(-1.0)  # a view: writes reach the tensor
    assert torch.equal(a[4:8], torch.full((4,), -1.0))


def _model(seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]


def _grads(params, step: int, bad: bool = False) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    if bad:
        grads[2][3] = float("nan")
    return grads


@pytest.mark.parametrize("size", [4, 8192])
def test_adamw_in_pieces_is_torchs_adamw_and_skips_a_bad_step(size):
    """Five steps, the third one's gradient non-finite and its found_inf set: the same weights,
    moments and step counts as torch's AdamW (its loop implementation) taking the four good
    steps, in float64; a rate held in a tensor, as the static step holds it."""
    ours, ref = _model(0), [p.detach().double().requires_grad_() for p in _model(0)]
    kw = {"betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.05}
    opt = torch.optim.AdamW(ours, lr=torch.tensor(0.01), fused=True, **kw)
    ref_opt = torch.optim.AdamW(ref, lr=0.01, foreach=False, **kw)
    for step in range(5):
        bad = step == 2
        for p, g in zip(ours, _grads(ours, step, bad), strict=True):
            p.grad = g
        adamw_step(opt, torch.tensor(float(bad)), size=size)
        if not bad:
            for p, g in zip(ref, _grads(ref, step), strict=True):
                p.grad = g.double()
            ref_opt.step()
    for p, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(p.detach().double(), r.detach(), rtol=1e-5, atol=1e-6)
        mine, theirs = opt.state[p], ref_opt.state[r]
        assert float(mine["step"]) == float(theirs["step"]) == 4.0
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(mine[key].double(), theirs[key], rtol=1e-5, atol=1e-7)


def test_adamw_in_pieces_takes_a_non_contiguous_gradient_whole_as_torchs_step_does():
    """A tensor whose gradient cannot be cut into views goes to the kernel whole: the update
    is torch's own step's on the same gradients, bit for bit."""
    params = _model(1)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = torch.optim.AdamW(params, lr=0.01, fused=True)
    ref = torch.optim.AdamW(twin, lr=0.01, fused=True)
    for step in range(2):
        grads = _grads(params, step)
        grads[0] = grads[0].t().contiguous().t()  # [7, 5], column-major
        for p, r, g in zip(params, twin, grads, strict=True):
            p.grad, r.grad = g, g.clone(memory_format=torch.preserve_format)
        assert not params[0].grad.is_contiguous()
        adamw_step(opt, size=4)
        ref.step()
    for p, r in zip(params, twin, strict=True):
        assert torch.equal(p, r)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"fused": False}, "fused"), ({"amsgrad": True}, "amsgrad"), ({"maximize": True}, "maximize")],
)
def test_what_the_pieces_cannot_do_is_refused_by_name(kwargs, key):
    with pytest.raises(ValueError, match=key):
        PiecewiseAdamW(_model(0), lr=0.01, **{"fused": True, **kwargs})


def test_the_piecewise_optimiser_steps_as_torchs_fused_adamw():
    """Its ``step`` (found_inf read from the attribute, as the static step sets it) against
    torch's fused AdamW, bit for bit, and the same state dict."""
    params, twin = _model(2), _model(2)
    opt = PiecewiseAdamW(params, lr=0.01, fused=True, weight_decay=0.1)
    ref = torch.optim.AdamW(twin, lr=0.01, fused=True, weight_decay=0.1)
    for step, bad in enumerate([False, True, False]):
        for p, r, g in zip(params, twin, _grads(params, step), strict=True):
            p.grad, r.grad = g, g.clone()
        opt.found_inf = ref.found_inf = torch.tensor(float(bad))
        opt.step()
        ref.step()
    for p, r in zip(params, twin, strict=True):
        assert torch.equal(p, r)
    mine, theirs = opt.state_dict(), ref.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    for k, v in theirs["state"].items():
        for key, value in v.items():
            assert torch.equal(mine["state"][k][key], value), key
