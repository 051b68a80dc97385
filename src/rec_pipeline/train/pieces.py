"""Tensors cut into short flat pieces for torch's multi-tensor kernels: the static step's fused
AdamW, the guard's norms and the clip.

Those kernels give one thread block each chunk of up to 65,536 values of one tensor, and a block
works through its chunk alone. The dense model is a few large matrices (each task tower's first
layer holds ~350K values) and many small ones, so a few blocks streamed most of the bytes while
most of an H200's 132 SMs idled: at batch 1,024 the fused AdamW took 89 us a step for 0.9M
values (bytes that move in ~5 us), the guard's two norms 30 us. In pieces of ``PIECE`` values,
44-55 us and 19 us (world2, ``benchmarks/profile_step.py``): a launch of the four-list AdamW
kernel takes at most 36 tensors, so a launch still has few blocks. The pieces are views:
nothing is copied.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

import torch
from torch import Tensor

#: Values per piece (8,192 measured the same within noise).
PIECE = 32768


def pieces(
    tensors: Sequence[Tensor], size: int = PIECE, whole: Container[int] = ()
) -> tuple[list[Tensor], list[int]]:
    """Flat views of at most ``size`` values that cover each tensor (a non-contiguous one, and
    those whose indices are in ``whole``, are left whole), and for each view the index of the
    tensor it belongs to."""
    (views,), owner = _pieces_alike([tensors], size, whole)
    return views, owner


def _pieces_alike(
    lists: Sequence[Sequence[Tensor]], size: int, whole: Container[int] = ()
) -> tuple[list[list[Tensor]], list[int]]:
    """The same cut of every list's i-th tensor (one shape): pieces where all are contiguous,
    the whole tensors where one is not or ``i`` is in ``whole``; and for each piece the index
    of its tensors."""
    out: list[list[Tensor]] = [[] for _ in lists]
    owner: list[int] = []
    for i, group in enumerate(zip(*lists, strict=True)):
        keep = i in whole or group[0].numel() <= size or not all(t.is_contiguous() for t in group)
        for dest, t in zip(out, group, strict=True):
            dest.extend((t,) if keep else t.view(-1).split(size))
        owner += [i] * (len(out[0]) - len(owner))
    return out, owner


class PiecewiseAdamW(torch.optim.AdamW):
    """torch's fused AdamW whose ``step`` runs the fused kernel over pieces of its tensors
    (:func:`adamw_step`): the same update and state (its state dict is AdamW's), a
    ``found_inf`` attribute read as the fused optimisers read it. The static step's dense
    optimiser."""

    def __init__(self, params, **kwargs) -> None:
        for key, needed in (("fused", True), ("amsgrad", False), ("maximize", False)):
            if bool(kwargs.get(key, False)) != needed:
                raise ValueError(f"PiecewiseAdamW needs {key}={needed}")
        super().__init__(params, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("PiecewiseAdamW.step takes no closure")
        adamw_step(self, getattr(self, "found_inf", None))


@torch.no_grad()
def adamw_step(opt: torch.optim.AdamW, found_inf: Tensor | None = None, size: int = PIECE) -> None:
    """``opt.step()`` of a fused AdamW without amsgrad or maximize, its kernel run over pieces
    of the tensors: the same update, state and step counts. ``found_inf`` (a 0-d float tensor
    on the parameters' device): 1 skips the update, the step counts included."""
    for group in opt.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        for p in params:  # the state torch's AdamW gives a fused group on its first step
            state = opt.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        states = [opt.state[p] for p in params]
        steps = [s["step"] for s in states]
        lists = [params, [p.grad for p in params]]
        lists += [[s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]]
        cut, owner = _pieces_alike(lists, size)
        torch._foreach_add_(steps, 1)
        beta1, beta2 = group["betas"]
        torch._fused_adamw_(
            *cut,
            [],
            [steps[i] for i in owner],  # a piece's step: its tensor's (read, not written)
            amsgrad=False,
            lr=group["lr"],
            beta1=float(beta1),
            beta2=float(beta2),
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
            grad_scale=None,
            found_inf=found_inf,
        )
        if found_inf is not None:
            torch._foreach_sub_(steps, [found_inf] * len(steps))
