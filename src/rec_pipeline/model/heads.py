"""Per-task towers: MLP -> one logit, output bias at the prior's log-odds (B batch, H input)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .mlp import MLP


def prior_logit(p: float) -> float:
    """``log(p / (1 - p))``; p must lie in (0, 1)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a prior rate must lie in (0, 1) (got {p})")
    return math.log(p / (1.0 - p))


class TaskHead(nn.Module):
    """``[B, H] -> [B]``: hidden layers ``mlp_dims`` (Linear -> [BN] -> act -> [Dropout]) and an
    output ``Linear(-> 1)`` whose bias starts at ``log(p / (1 - p))``."""

    def __init__(
        self,
        in_dim: int,
        mlp_dims: Sequence[int],
        *,
        activation: str,
        dropout: float,
        use_bn: bool,
        prior_rate: float,
    ) -> None:
        super().__init__()
        self.mlp = MLP(
            in_dim, mlp_dims, activation=activation, dropout=dropout, use_bn=use_bn, out_dim=1
        )
        self.prior_rate = float(prior_rate)
        self.reset_bias()

    @torch.no_grad()
    def reset_bias(self) -> None:
        out = self.mlp.output_linear
        assert out is not None
        out.bias.fill_(prior_logit(self.prior_rate))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x).squeeze(-1)
