"""Training diagnostics: per-task gradient conflict on the shared parameters, and model health.

Notation: B batch rows, E experts.
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


def task_gradient_stats(model: Any, task_losses: Mapping[str, Tensor]) -> dict[str, float]:
    """Gradient norm of each task's loss over ``model.shared_parameters()`` and pairwise cosines.

    Returns ``grad_norm_{task}`` and ``grad_cos_{a}_{b}`` (pairs in ``task_losses`` order). Uses
    ``torch.autograd.grad(..., retain_graph=True)``: parameters' ``.grad`` are untouched and the
    graph survives for the training ``backward()`` that follows. A parameter a loss does not
    reach counts as a zero gradient; the cosine with a zero gradient is reported as 0.
    """
    params = [p for p in model.shared_parameters() if p.requires_grad]
    if not params:
        return {}
    flat: dict[str, Tensor] = {}
    for task, loss in task_losses.items():
        if not loss.requires_grad:
            flat[task] = torch.zeros(sum(p.numel() for p in params), device=params[0].device)
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flat[task] = torch.cat(
            [
                (torch.zeros_like(p) if g is None else g).reshape(-1).float()
                for g, p in zip(grads, params, strict=True)
            ]
        )
    names: list[str] = []
    values: list[Tensor] = []
    norms = {t: v.norm() for t, v in flat.items()}
    for task in flat:
        names.append(f"grad_norm_{task}")
        values.append(norms[task])
    for a, b in itertools.combinations(flat, 2):
        denom = norms[a] * norms[b]
        cos = torch.where(denom > 0, (flat[a] @ flat[b]) / denom.clamp(min=1e-30), denom * 0)
        names.append(f"grad_cos_{a}_{b}")
        values.append(cos)
    return dict(zip(names, torch.stack(values).cpu().tolist(), strict=True))


@torch.no_grad()
def health_metrics(
    out: Any,
    click: Tensor,
    conversion: Tensor,
    *,
    dead_fraction: float = DEAD_EXPERT_FRACTION,
) -> dict[str, float]:
    """Model health statistics of one batch (one device synchronisation).

    gate_{task}_e{i}: batch-mean gate weight of expert i.
    gate_entropy_{task}: batch-mean entropy (nats) of the gate distribution; ln E is uniform.
    dead_experts_{task}: number of experts whose batch-mean weight is below
        ``dead_fraction / E`` (a tenth of the uniform share by default).
    logit_{task}_mean / logit_{task}_std, prob_{task}_mean: over the batch.
    prob_ctcvr_mean: batch mean of p_ctr * p_cvr (when both tasks exist).
    pos_rate_click, pos_rate_conversion: label rates of the batch.
    """
    names: list[str] = []
    values: list[Tensor] = []

    def put(name: str, value: Tensor) -> None:
        names.append(name)
        values.append(value.detach().float().reshape(()))

    for task, g in out.gates.items():
        g = g.float()  # [B, E]
        n_exp = g.shape[-1]
        gbar = g.mean(dim=0)
        for i in range(n_exp):
            put(f"gate_{task}_e{i}", gbar[i])
        ent = -(g * torch.log(g.clamp(min=1e-12))).sum(dim=-1).mean()
        put(f"gate_entropy_{task}", ent)
        put(f"dead_experts_{task}", (gbar < dead_fraction / n_exp).sum())
    probs = {}
    for task, logit in out.logits.items():
        lf = logit.float()
        put(f"logit_{task}_mean", lf.mean())
        put(f"logit_{task}_std", lf.std(unbiased=False))
        probs[task] = torch.sigmoid(lf)
        put(f"prob_{task}_mean", probs[task].mean())
    if "ctr" in probs and "cvr" in probs:
        put("prob_ctcvr_mean", (probs["ctr"] * probs["cvr"]).mean())
    put("pos_rate_click", click.float().mean())
    put("pos_rate_conversion", conversion.float().mean())
    return dict(zip(names, torch.stack(values).cpu().tolist(), strict=True))
