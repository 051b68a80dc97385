"""Second-order field interactions (B batch, F fields, D embedding dim): the factorisation
machine's summed form, and every pair's dot product (DLRM's interaction)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .mlp import MLP


def fm_interaction(emb_stack: Tensor) -> Tensor:
    """``[B, F, D] -> [B, D]``: ``0.5 * ((sum_f e_f)^2 - sum_f e_f^2) / F``.

    Equals ``sum_{i<j} e_i * e_j / F`` (elementwise products of all field pairs), in O(F D).
    """
    num_fields = emb_stack.shape[1]
    sum_e = emb_stack.sum(dim=1)
    sum_sq = (emb_stack * emb_stack).sum(dim=1)
    return 0.5 * (sum_e * sum_e - sum_sq) / num_fields


def pair_count(num_fields: int) -> int:
    """How many field pairs :func:`pairwise_dots` returns: F (F - 1) / 2."""
    return num_fields * (num_fields - 1) // 2


def pairwise_dots(emb_stack: Tensor) -> Tensor:
    """``[B, F, D] -> [B, F (F - 1) / 2]``: ``<e_i, e_j>`` for every field pair i < j, in the
    order of ``torch.triu_indices(F, F, 1)``.

    Unlike the FM's sum over pairs, each pair keeps its own feature, so a tower can weigh, say,
    the user's behaviour list against the candidate item apart from every other pair; an MLP
    on the concatenated vectors learns such dot products poorly.
    """
    num_fields = emb_stack.shape[1]
    gram = torch.bmm(emb_stack, emb_stack.transpose(1, 2))  # [B, F, F]
    i, j = torch.triu_indices(num_fields, num_fields, 1, device=emb_stack.device)
    return gram[:, i, j]


class FMLayer(nn.Module):
    """FM vector and, optionally, its logit.

    Args:
        dim: D.
        with_logit: build the ``fm_logit`` part.
        projection_dim: ``None`` -> ``fm_logit = sum_d fm_vec``; an int P ->
            ``fm_logit = Linear(P -> 1)(ReLU(Linear(D -> P)(fm_vec)))``.

    ``forward(emb_stack [B, F, D]) -> (fm_vec [B, D], fm_logit [B] or None)``.
    """

    def __init__(self, dim: int, *, with_logit: bool, projection_dim: int | None) -> None:
        super().__init__()
        self.dim = int(dim)
        self.with_logit = bool(with_logit)
        self.proj = (
            MLP(dim, [projection_dim], activation="relu", out_dim=1)
            if with_logit and projection_dim is not None
            else None
        )

    def forward(self, emb_stack: Tensor) -> tuple[Tensor, Tensor | None]:
        fm_vec = fm_interaction(emb_stack)
        if not self.with_logit:
            return fm_vec, None
        if self.proj is None:
            return fm_vec, fm_vec.sum(dim=-1)
        return fm_vec, self.proj(fm_vec).squeeze(-1)
