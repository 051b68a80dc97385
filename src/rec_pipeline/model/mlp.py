"""Multi-layer perceptrons: the one builder every dense block of the model uses.

A hidden layer is ``Linear -> [BatchNorm1d] -> activation -> [Dropout]``; an optional output layer
is a bare ``Linear`` (no normalisation, activation or dropout). Every Linear is an
:class:`AlignedLinear`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "prelu", "leaky_relu")


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (``prelu`` has one learnable slope)."""
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU()
    if name == "tanh":
        return nn.Tanh()
    if name == "prelu":
        return nn.PReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01)
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


def _half(x: Tensor) -> bool:
    """Whether a product with ``x`` runs in 16-bit floats (its dtype, or autocast's)."""
    return x.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled(x.device.type)


class AlignedLinear(nn.Linear):
    """``nn.Linear`` whose input width, where it is not a multiple of ``ALIGN``, is padded with
    zeros at use on a GPU in 16-bit floats (bf16 autocast): the same parameters (and state
    dict) and the same product, but operands cuBLAS takes its Hopper kernels for. Unaligned, a
    bf16 product falls back to generic kernels: world2's 299-wide first layers ran in
    cutlass's ``align1`` kernels (up to 22 us a product at batch 1,024; padded, the step ran
    4 % faster). Under ``torch.compile`` the pads fuse into the kernels that make the operands.
    In fp32 (the evaluation) the pads were only copies: scoring ran 5 % slower with them."""

    ALIGN = 8

    def forward(self, x: Tensor) -> Tensor:
        pad = -self.in_features % self.ALIGN
        if not pad or not x.is_cuda or not _half(x):  # fp32 products gain nothing from it
            return super().forward(x)
        return F.linear(F.pad(x, (0, pad)), F.pad(self.weight, (0, pad)), self.bias)


class MLP(nn.Sequential):
    """``[B, in_dim] -> [B, out_dim]``.

    Args:
        in_dim: input width.
        hidden_dims: widths of the hidden layers (each Linear -> [BN] -> act -> [Dropout]).
        activation: activation name (see :data:`ACTIVATIONS`).
        dropout: dropout probability after each hidden activation (0 = no Dropout module).
        use_bn: BatchNorm1d after each hidden Linear (needs B > 1 in training mode).
        out_dim: when given, a final bare ``Linear(last -> out_dim)``.

    ``self.out_dim`` is the output width: ``out_dim``, else the last hidden width, else ``in_dim``
    (an MLP with no layers is the identity).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int] = (),
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        use_bn: bool = False,
        out_dim: int | None = None,
    ) -> None:
        layers: list[nn.Module] = []
        width = int(in_dim)
        for h in hidden_dims:
            h = int(h)
            if h <= 0:
                raise ValueError(f"MLP layer widths must be positive (got {list(hidden_dims)})")
            layers.append(AlignedLinear(width, h))
            if use_bn:
                layers.append(nn.BatchNorm1d(h))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        if out_dim is not None:
            layers.append(AlignedLinear(width, int(out_dim)))
            width = int(out_dim)
        super().__init__(*layers)
        self.in_dim = int(in_dim)
        self.out_dim = width

    @property
    def output_linear(self) -> nn.Linear | None:
        """The last Linear layer (the output layer when ``out_dim`` was given)."""
        for layer in reversed(self):
            if isinstance(layer, nn.Linear):
                return layer
        return None
