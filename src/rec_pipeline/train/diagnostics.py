"""Training diagnostics: per-task gradient conflict on the shared parameters, and model health.

Both return history rows ``{"name", "value"}`` plus the structure as columns (``task``,
``expert``, ``other_task``) rather than in the name. Notation: B batch rows, E experts.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..config import Config

DEAD_EXPERT_FRACTION = 0.1


def task_losses_for_diagnostics(components: Mapping[str, Tensor], cfg: Config) -> dict[str, Tensor]:
    """The loss each task's tower is trained by, from :class:`LossResult.components`.

    ESMM: ``ctr -> loss_ctr``; ``cvr -> loss_ctcvr + lambda_cvr_aux * loss_cvr_aux`` (the CVR
    tower learns through the CTCVR product). Single-task mode: ``loss_ctr`` and ``loss_cvr``.
    """
    if cfg.use_esmm:
        return {
            "ctr": components["loss_ctr"],
            "cvr": components["loss_ctcvr"] + cfg.esmm.lambda_cvr_aux * components["loss_cvr_aux"],
        }
    return {t: components[f"loss_{t}"] for t in cfg.model.tasks if f"loss_{t}" in components}


def _rows(meta: list[dict[str, Any]], values: list[Tensor]) -> list[dict[str, Any]]:
    """History rows: each ``meta`` dict with its value (one device synchronisation for all)."""
    if not values:
        return []
    host = torch.stack(values).cpu().tolist()
    return [{**m, "value": v} for m, v in zip(meta, host, strict=True)]


def _flat_grads(loss: Tensor, params: list[Tensor]) -> Tensor:
    """``d loss / d params`` flattened to one fp32 vector (a parameter not reached counts 0)."""
    if not loss.requires_grad:
        return torch.zeros(sum(p.numel() for p in params), device=params[0].device)
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1).float()
            for g, p in zip(grads, params, strict=True)
        ]
    )


def task_gradient_stats(model: Any, task_losses: Mapping[str, Tensor]) -> list[dict[str, Any]]:
    """Gradient norm of each task's loss over ``model.shared_parameters()`` and pairwise cosines.

    Rows ``{"name": "grad_norm", "task"}`` per task and ``{"name": "grad_cos", "task",
    "other_task"}`` per pair (pairs in ``task_losses`` order). Uses ``torch.autograd.grad(...,
    retain_graph=True)``: parameters' ``.grad`` are untouched and the graph survives for the
    training ``backward()`` that follows. The cosine with a zero gradient is reported as 0.
    """
    params = [p for p in model.shared_parameters() if p.requires_grad]
    if not params:
        return []
    flat = {task: _flat_grads(loss, params) for task, loss in task_losses.items()}
    meta: list[dict[str, Any]] = []
    values: list[Tensor] = []
    norms = {t: v.norm() for t, v in flat.items()}
    for task in flat:
        meta.append({"name": "grad_norm", "task": task})
        values.append(norms[task])
    for a, b in itertools.combinations(flat, 2):
        denom = norms[a] * norms[b]
        cos = torch.where(denom > 0, (flat[a] @ flat[b]) / denom.clamp(min=1e-30), denom * 0)
        meta.append({"name": "grad_cos", "task": a, "other_task": b})
        values.append(cos)
    return _rows(meta, values)


@torch.no_grad()
def health_metrics(
    out: Any,
    click: Tensor,
    conversion: Tensor,
    *,
    dead_fraction: float = DEAD_EXPERT_FRACTION,
) -> list[dict[str, Any]]:
    """Model health statistics of one batch as history rows (one device synchronisation).

    gate_weight (task, expert): batch-mean gate weight of the expert.
    gate_entropy (task): batch-mean entropy (nats) of the gate distribution; ln E is uniform.
    dead_experts (task): number of experts whose batch-mean weight is below
        ``dead_fraction / E`` (a tenth of the uniform share by default).
    logit_mean / logit_std, prob_mean (task): over the batch; prob_mean of ``ctcvr`` is the mean
        of p_ctr * p_cvr (when both tasks exist).
    pos_rate (task): label rate of the batch, click for ``ctr``, conversion for ``ctcvr``.
    """
    meta: list[dict[str, Any]] = []
    values: list[Tensor] = []

    def put(name: str, value: Tensor, task: str, expert: int | None = None) -> None:
        meta.append({"name": name, "task": task} | ({} if expert is None else {"expert": expert}))
        values.append(value.detach().float().reshape(()))

    for task, g in out.gates.items():
        g = g.float()  # [B, E]
        n_exp = g.shape[-1]
        gbar = g.mean(dim=0)  # [E]
        for i in range(n_exp):
            put("gate_weight", gbar[i], task, expert=i)
        put("gate_entropy", -(g * torch.log(g.clamp(min=1e-12))).sum(dim=-1).mean(), task)
        put("dead_experts", (gbar < dead_fraction / n_exp).sum(), task)
    probs = {}
    for task, logit in out.logits.items():
        lf = logit.float()  # [B]
        put("logit_mean", lf.mean(), task)
        put("logit_std", lf.std(unbiased=False), task)
        probs[task] = torch.sigmoid(lf)
        put("prob_mean", probs[task].mean(), task)
    if "ctr" in probs and "cvr" in probs:
        put("prob_mean", (probs["ctr"] * probs["cvr"]).mean(), "ctcvr")
    put("pos_rate", click.float().mean(), "ctr")
    put("pos_rate", conversion.float().mean(), "ctcvr")
    return _rows(meta, values)
