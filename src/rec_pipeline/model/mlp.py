"""Multi-layer perceptrons: the one builder every dense block of the model uses.

A hidden layer is ``Linear -> [BatchNorm1d] -> activation -> [Dropout]``; an optional output layer
is a bare ``Linear`` (no normalisation, activation or dropout).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

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
            layers.append(nn.Linear(width, h))
            if use_bn:
                layers.append(nn.BatchNorm1d(h))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        if out_dim is not None:
            layers.append(nn.Linear(width, int(out_dim)))
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
