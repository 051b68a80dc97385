"""The dual optimiser: AdamW for dense parameters, sparse Adagrad or Adam for the embedding
tables."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from rec_pipeline.config import Config
from rec_pipeline.train.pieces import PiecewiseAdamW
from rec_pipeline.train.row_optimizers import RowAdagrad, RowAdam

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
        loads = [(self.dense, state["dense"])]
        if self.sparse is not None and state.get("sparse") is not None:
            loads.append((self.sparse, state["sparse"]))
        for opt, saved in loads:
            held = [group["lr"] for group in opt.param_groups]
            opt.load_state_dict(saved)
            # A rate held in a device tensor (the static step) stays that tensor, whichever
            # step mode saved the state; a float rate stays a float.
            for group, old in zip(opt.param_groups, held, strict=True):
                if torch.is_tensor(old):
                    old.fill_(float(group["lr"]))
                    group["lr"] = old
                elif torch.is_tensor(group["lr"]):
                    group["lr"] = float(group["lr"])


def build_optimizers(model: torch.nn.Module, cfg: Config, *, static: bool = False) -> Optimizers:
    """AdamW over dense parameters; SparseAdam (``optim.sparse.type: adam``) or Adagrad
    (``adagrad``) over the embedding tables when they are sparse.

    With ``embedding.sparse_grad: false`` the tables have dense gradients and join AdamW, which
    the config only allows with ``optim.sparse.allow_fallback_if_empty: true``.

    ``static`` (``runtime.step_mode: graph``): the same updates in forms a CUDA graph can
    replay: :class:`RowAdagrad` / :class:`RowAdam` instead of torch's (they also add the
    ``embedding.l2_reg`` gradient), a capturable fused AdamW (:class:`PiecewiseAdamW`), and
    learning rates held in device tensors that the schedulers fill in place (``initial_lr``
    stays a float, so the schedules stay host maths).
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
    device = dense_params[0].device if dense_params else torch.device("cpu")
    # The static step's: the same fused kernel, run over short pieces of the tensors.
    adamw = PiecewiseAdamW if static else torch.optim.AdamW
    dense = adamw(
        dense_params,
        lr=_lr(o.dense.lr, device, static),
        weight_decay=o.dense.weight_decay,
        betas=tuple(o.dense.betas),
        eps=o.dense.eps,
        # One fused kernel for all dense parameters on a GPU: the model is small, so a step
        # is bound by kernel launches rather than by arithmetic. The static step needs the
        # fused kernel on the CPU too: only it skips an update on a device-side found_inf.
        fused=(on_gpu or static) or None,
        capturable=static and on_gpu,
    )
    sparse = None
    if use_sparse and sparse_params:
        sp, lr = o.sparse, _lr(o.sparse.lr, device, static)
        l2 = cfg.embedding.l2_reg
        acc = sp.initial_accumulator_value
        if sp.type == "adagrad" and static:
            sparse = RowAdagrad(
                sparse_params, lr=lr, eps=sp.eps, initial_accumulator_value=acc, l2=l2
            )
        elif sp.type == "adagrad":
            sparse = _eager_adagrad(sparse_params, lr, sp.eps, acc)
        elif static:
            sparse = RowAdam(sparse_params, lr=lr, betas=tuple(sp.betas), eps=sp.eps, l2=l2)
        else:
            sparse = torch.optim.SparseAdam(sparse_params, lr=lr, betas=tuple(sp.betas), eps=sp.eps)
    optimizers = Optimizers(dense=dense, sparse=sparse)
    if static:
        for opt in optimizers.all():
            for group in opt.param_groups:
                group["initial_lr"] = float(group["lr"])
    return optimizers


def _eager_adagrad(params: list, lr: float, eps: float, acc: float) -> torch.optim.Adagrad:
    """torch's Adagrad, which updates a sparse gradient's rows only. Its sparse update builds
    tensors with torch's invariant checks at their default (off), which warns once unless the
    choice is explicit: make it so, unchanged."""
    torch.sparse.check_sparse_tensor_invariants.disable()
    return torch.optim.Adagrad(params, lr=lr, eps=eps, initial_accumulator_value=acc)


def _lr(value: float, device: torch.device, static: bool) -> float | torch.Tensor:
    """A float, or for the static step a device tensor (a captured step reads it there)."""
    return torch.tensor(float(value), device=device) if static else value
