"""The dual optimiser: AdamW for dense parameters, sparse Adam for the embedding tables."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from rec_pipeline.config import Config

log = logging.getLogger(__name__)


@dataclass
class Optimizers:
    dense: torch.optim.Optimizer
    sparse: torch.optim.Optimizer | None

    def zero_grad(self) -> None:
        self.dense.zero_grad(set_to_none=True)
        if self.sparse is not None:
            self.sparse.zero_grad(set_to_none=True)

    def all(self) -> list[torch.optim.Optimizer]:
        """The dense optimiser, then the sparse one when there is one."""
        return [self.dense] if self.sparse is None else [self.dense, self.sparse]

    def state_dict(self) -> dict:
        return {
            "dense": self.dense.state_dict(),
            "sparse": None if self.sparse is None else self.sparse.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state["dense"])
        if self.sparse is not None and state.get("sparse") is not None:
            self.sparse.load_state_dict(state["sparse"])


def build_optimizers(model: torch.nn.Module, cfg: Config) -> Optimizers:
    """AdamW over dense parameters; SparseAdam over the embedding tables when they are sparse.

    With ``embedding.sparse_grad: false`` the tables have dense gradients and join AdamW, which
    the config only allows with ``optim.sparse.allow_fallback_if_empty: true``.
    """
    o = cfg.optim
    sparse_params = list(model.sparse_parameters()) if cfg.embedding.sparse_grad else []
    sparse_ids = {id(p) for p in sparse_params}
    dense_params = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    use_sparse = o.type == "dual_sparse_dense" and o.sparse.enabled
    if use_sparse and not sparse_params:
        # Only with optim.sparse.allow_fallback_if_empty (Config checks it before any work).
        log.warning("Sparse optimiser has no parameters; embeddings are trained by AdamW.")
    on_gpu = bool(dense_params) and all(p.is_cuda for p in dense_params)
    dense = torch.optim.AdamW(
        dense_params,
        lr=o.dense.lr,
        weight_decay=o.dense.weight_decay,
        betas=tuple(o.dense.betas),
        eps=o.dense.eps,
        # One fused kernel for all dense parameters on a GPU: the model is small, so a step
        # is bound by kernel launches rather than by arithmetic.
        fused=on_gpu or None,
    )
    sparse = None
    if use_sparse and sparse_params:
        sparse = torch.optim.SparseAdam(
            sparse_params, lr=o.sparse.lr, betas=tuple(o.sparse.betas), eps=o.sparse.eps
        )
    return Optimizers(dense=dense, sparse=sparse)
