"""The training objective (docs/model.md, Objective): ESMM v2 with a CTCVR aux-focal term, the CVR auxiliary loss,
the gate regulariser, and the positive-weight controller.

All loss math runs in float32: logits are cast first, so the losses are fp32 under autocast too.
Notation: B batch rows, E experts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import Config
from .schedules import pos_weight_clip_at

LN2 = math.log(2.0)

ESMM_COMPONENTS = (
    "loss_ctr",
    "loss_ctcvr",
    "loss_ctcvr_bce",
    "loss_ctcvr_focal",
    "loss_cvr_aux",
    "loss_gate_entropy",
    "loss_gate_balance",
)


@dataclass
class LossResult:
    """``total``: scalar fp32 tensor to backpropagate. ``components``: scalar fp32 tensors, unweighted
    (see :func:`compute_losses` for each one's meaning; all keys are always present)."""

    total: Tensor
    components: dict[str, Tensor] = field(default_factory=dict)

    def stacked(self) -> tuple[list[str], Tensor]:
        """(names, fp32 vector [1 + C]) of the total and the components, detached, on device."""
        names = ["loss_total", *self.components]
        values = torch.stack([self.total.detach(), *(v.detach() for v in self.components.values())])
        return names, values.float()


# -------------------------------------------------------------------------------- log-space maths


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, stable over the whole range.

    ``log(-expm1(x))`` for ``x > -ln 2`` and ``log1p(-exp(x))`` otherwise (Mächler 2012). Each
    branch only ever sees inputs where it is finite (the other side is replaced by a harmless
    constant before evaluation), so no inf/NaN gradient leaks through ``torch.where``. ``x`` is
    clamped to ``<= -tiny`` (the dtype's smallest normal), so ``x = 0`` gives a large finite
    negative value instead of ``-inf``.
    """
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near_zero = x > -LN2
    a = torch.where(near_zero, x, torch.full_like(x, -1.0))
    b = torch.where(near_zero, torch.full_like(x, -1.0), x)
    return torch.where(near_zero, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(b)))


def weighted_bce_from_log_prob(log_p: Tensor, y: Tensor, pos_weight: float | Tensor) -> Tensor:
    """Elementwise ``-w*y*log p - (1-y)*log(1-p)`` from ``log p`` (``[B] -> [B]``)."""
    return -(pos_weight * y * log_p) - (1.0 - y) * log1mexp(log_p)


def ctcvr_log_prob(logit_ctr: Tensor, logit_cvr: Tensor, *, version: str, eps: float) -> Tensor:
    """``log p_ctcvr`` ``[B]``.

    v2: ``logsigmoid(l_ctr) + logsigmoid(l_cvr)`` (exact in log space).
    legacy (deprecated): ``log(clamp(sigmoid(l_ctr) * sigmoid(l_cvr), eps, 1 - eps))``, the product
    in probability space; it underflows for confident logits and its gradient is zero where the
    clamp is active. Kept only to reproduce old runs.
    """
    if version == "v2":
        return F.logsigmoid(logit_ctr) + F.logsigmoid(logit_cvr)
    if version == "legacy":
        p = torch.sigmoid(logit_ctr) * torch.sigmoid(logit_cvr)
        return torch.log(p.clamp(min=eps, max=1.0 - eps))
    raise ValueError(f"esmm.version must be 'v2' or 'legacy' (got {version!r})")


def focal_weight(
    log_p: Tensor,
    y: Tensor,
    *,
    gamma: float,
    alpha: float | None,
    detach: bool,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Focal weight ``alpha_t * (1 - p_t)^gamma`` ``[B]`` from ``log p``.

    ``p_t = p`` for positives, ``1 - p`` for negatives, so ``1 - p_t`` is ``1 - p`` (computed as
    ``-expm1(log p)``) for positives and ``p`` for negatives. ``alpha_t = alpha`` for positives and
    ``1 - alpha`` for negatives (only when ``alpha`` is given). Computed in ``dtype``; detached
    from the graph when ``detach``.
    """
    lp = log_p.detach() if detach else log_p
    lp = lp.to(dtype)
    yy = y.to(dtype)
    one_minus_pt = yy * (-torch.expm1(lp)) + (1.0 - yy) * torch.exp(lp)
    w = one_minus_pt.clamp(min=0.0) ** gamma
    if alpha is not None:
        w = w * (alpha * yy + (1.0 - alpha) * (1.0 - yy))
    return w.float()


# ------------------------------------------------------------------------------------- gate terms


def gate_regularisers(gates: Mapping[str, Tensor], eps: float) -> tuple[Tensor, Tensor]:
    """``(neg_entropy, balance_kl)``, each averaged over tasks.

    neg_entropy: ``mean_b sum_e g log(g + eps)`` = ``-H(g)`` per row, averaged over rows; adding it
    with a positive weight to the loss pushes every row's routing towards uniform.
    balance_kl: ``KL(mean_b g || uniform) = sum_e gbar_e log(E * gbar_e)``; pushes the batch's
    expert load towards uniform.
    """
    neg_h, kl = [], []
    for g in gates.values():
        g = g.float()  # [B, E]
        n_exp = g.shape[-1]
        neg_h.append((g * torch.log(g + eps)).sum(dim=-1).mean())
        gbar = g.mean(dim=0)
        kl.append((gbar * torch.log(gbar * n_exp + eps)).sum())
    return torch.stack(neg_h).mean(), torch.stack(kl).mean()


# ---------------------------------------------------------------------------------------- losses


def _autocast_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype active on ``device``'s type, else float32."""
    kind = device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return torch.float32


def _on_device(value: float | Tensor, device: torch.device) -> Tensor:
    """A positive weight as a 0-d tensor on ``device`` (a device tensor is used as it is: the
    static step keeps its weights there, and a captured step must not copy from the host)."""
    if torch.is_tensor(value):
        return value
    return torch.tensor(float(value), device=device)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """``sum(values * mask) / count(mask)``; 0 (with a graph) when the mask is empty."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def focal_active(cfg: Config, step: int) -> bool:
    """Whether the CTCVR aux-focal term is on at ``step`` (enabled and past its warm-up)."""
    focal = cfg.loss.aux_focal
    return bool(focal.enabled and step >= focal.warmup_steps)


def _ctcvr_focal(
    log_p: Tensor, y_conv: Tensor, bce: Tensor, *, active: bool | Tensor, cfg: Config, zero: Tensor
) -> Tensor:
    """Mean focal-weighted CTCVR term ``[]``; ``zero`` unless ``active``.

    ``active`` may be a 0/1 float tensor ``[]``: the term is then always computed and scaled by
    it, so one compiled graph (and one captured step) serves both sides of the warm-up."""
    focal = cfg.loss.aux_focal
    switch = active if torch.is_tensor(active) else None
    if switch is None and not active:
        return zero
    fw = focal_weight(
        log_p,
        y_conv,
        gamma=focal.gamma,
        alpha=focal.alpha if focal.use_alpha else None,
        detach=focal.detach_p_for_weight,
        dtype=torch.float32 if focal.compute_fp32 else _autocast_dtype(y_conv.device),
    )
    term = (fw * bce).mean()
    return term if switch is None else term * switch


def esmm_losses(
    logits: Mapping[str, Tensor],
    y_click: Tensor,
    y_conv: Tensor,
    *,
    focal: bool | Tensor,
    cfg: Config,
    pos_weight: Mapping[str, float | Tensor],
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(total, components)`` of the ESMM objective; float labels ``[B]``, logits ``{task: [B]}``.

    See :func:`compute_losses` for each component (``focal``: whether the aux-focal term is on);
    ``total`` has no gate terms yet.
    """
    esmm = cfg.esmm
    zero = torch.zeros((), device=y_click.device)
    l_ctr, l_cvr = logits["ctr"].float(), logits["cvr"].float()
    pw_ctr = _on_device(pos_weight.get("ctr", 1.0), y_click.device)
    comps: dict[str, Tensor] = {}
    comps["loss_ctr"] = F.binary_cross_entropy_with_logits(l_ctr, y_click, pos_weight=pw_ctr)
    log_p = ctcvr_log_prob(l_ctr, l_cvr, version=esmm.version, eps=esmm.eps)  # [B]
    bce = weighted_bce_from_log_prob(log_p, y_conv, pos_weight.get("ctcvr", 1.0))
    comps["loss_ctcvr_bce"] = bce.mean()
    comps["loss_ctcvr_focal"] = _ctcvr_focal(log_p, y_conv, bce, active=focal, cfg=cfg, zero=zero)
    comps["loss_ctcvr"] = (
        comps["loss_ctcvr_bce"] + cfg.loss.aux_focal.lambda_ * comps["loss_ctcvr_focal"]
    )
    if esmm.lambda_cvr_aux > 0:
        per_row = F.binary_cross_entropy_with_logits(l_cvr, y_conv, reduction="none")
        comps["loss_cvr_aux"] = _masked_mean(per_row, (y_click > 0).float())
    else:
        comps["loss_cvr_aux"] = zero
    total = (
        esmm.lambda_ctr * comps["loss_ctr"]
        + esmm.lambda_ctcvr * comps["loss_ctcvr"]
        + esmm.lambda_cvr_aux * comps["loss_cvr_aux"]
    )
    return total, comps


def single_task_losses(
    logits: Mapping[str, Tensor],
    y_click: Tensor,
    y_conv: Tensor,
    *,
    cfg: Config,
    pos_weight: Mapping[str, float | Tensor],
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(total, components)`` of independent CTR and CVR losses (no ESMM product).

    A task without a logit has its component 0; only ``model.enabled_heads`` enter ``total``.
    """
    enabled = set(cfg.model.enabled_heads)
    zero = torch.zeros((), device=y_click.device)
    total = zero
    comps = {"loss_ctr": zero, "loss_cvr": zero}
    if "ctr" in logits:
        pw_ctr = _on_device(pos_weight.get("ctr", 1.0), y_click.device)
        comps["loss_ctr"] = F.binary_cross_entropy_with_logits(
            logits["ctr"].float(), y_click, pos_weight=pw_ctr
        )
        if "ctr" in enabled:
            total = total + cfg.loss.w_ctr * comps["loss_ctr"]
    if "cvr" in logits:
        per_row = F.binary_cross_entropy_with_logits(
            logits["cvr"].float(), y_conv, reduction="none"
        )
        comps["loss_cvr"] = _masked_mean(per_row, (y_click > 0).float())
        if "cvr" in enabled:
            total = total + cfg.loss.w_cvr * comps["loss_cvr"]
    return total, comps


def add_gate_terms(total: Tensor, out: Any, cfg: Config) -> tuple[Tensor, dict[str, Tensor]]:
    """``total`` plus the weighted gate regularisers, and their unweighted components.

    Applied only to a training-mode forward with gates (:func:`gate_regularisers`); in eval
    mode both components are 0 and ``total`` is unchanged.
    """
    gs = cfg.model.mmoe.gate_stabilize
    if not (out.training and out.gates):
        zero = torch.zeros((), device=total.device)
        return total, {"loss_gate_entropy": zero, "loss_gate_balance": zero}
    neg_h, kl = gate_regularisers(out.gates, gs.eps)
    if gs.entropy_reg_weight > 0:
        total = total + gs.entropy_reg_weight * neg_h
    if gs.load_balance_kl_weight > 0:
        total = total + gs.load_balance_kl_weight * kl
    return total, {"loss_gate_entropy": neg_h, "loss_gate_balance": kl}


def compute_losses(
    out: Any,
    click: Tensor,
    conversion: Tensor,
    *,
    step: int | None = None,
    focal: bool | Tensor | None = None,
    cfg: Config,
    pos_weight: Mapping[str, float | Tensor],
) -> LossResult:
    """The training objective for one batch: ESMM or single-task losses, plus gate terms.

    Args:
        out: a :class:`~rec_pipeline.model.builder.ModelOutput` (``logits``, ``gates``,
            ``training``).
        click, conversion: labels ``[B]`` (0/1).
        step: global optimisation step (for the aux-focal warm-up).
        focal: whether the aux-focal term is on, instead of deriving it from ``step``
            (:func:`focal_active`); one of the two is needed. A 0/1 float tensor ``[]`` turns
            it on or off without changing the computation's structure (the static step).
        cfg: the config.
        pos_weight: ``{"ctr": w, "ctcvr": w}`` from :meth:`PosWeights.current`.

    ESMM (``use_esmm``) components:
        loss_ctr: ``BCEWithLogits(l_ctr, click, pos_weight=pw_ctr)`` (mean over rows).
        loss_ctcvr_bce: mean of ``-pw_ctcvr*y*log p - (1-y)*log(1-p)``, ``p = p_ctr * p_cvr``,
            ``y = conversion``.
        loss_ctcvr_focal: mean of focal weight times the same elementwise terms; 0 when aux focal is
            disabled or ``step < warmup_steps``. The weight is computed in float32 when
            ``compute_fp32``, else in the active autocast dtype (float32 outside autocast).
        loss_ctcvr: ``loss_ctcvr_bce + lambda * loss_ctcvr_focal``.
        loss_cvr_aux: ``BCEWithLogits(l_cvr, conversion)`` averaged over click = 1 rows (0 when the
            batch has none).
        total = ``lambda_ctr*loss_ctr + lambda_ctcvr*loss_ctcvr + lambda_cvr_aux*loss_cvr_aux``
            + gate terms.
    Single-task mode: loss_ctr as above; loss_cvr = BCE(l_cvr, conversion) over click = 1 rows;
        total = ``w_ctr*loss_ctr + w_cvr*loss_cvr`` (tasks in ``model.enabled_heads``) + gate terms.
    Gate terms (both modes, only when ``out.training``): loss_gate_entropy = ``-H(g)``,
        loss_gate_balance = ``KL(mean g || uniform)`` (see :func:`gate_regularisers`); total adds
        ``entropy_reg_weight * loss_gate_entropy + load_balance_kl_weight * loss_gate_balance``.
        In eval mode both are 0.
    Embedding L2 (``embedding.l2_reg`` > 0, training mode): loss_embedding_l2 = the sum of
        squares of the distinct table rows the batch read; total adds ``l2_reg`` times it.
    """
    y_click, y_conv = click.float(), conversion.float()
    if cfg.use_esmm:
        if focal is None:
            if step is None:
                raise TypeError("compute_losses needs step or focal")
            focal = focal_active(cfg, step)
        total, comps = esmm_losses(
            out.logits, y_click, y_conv, focal=focal, cfg=cfg, pos_weight=pos_weight
        )
    else:
        total, comps = single_task_losses(
            out.logits, y_click, y_conv, cfg=cfg, pos_weight=pos_weight
        )
    total, gate_comps = add_gate_terms(total, out, cfg)
    comps.update(gate_comps)
    if out.embedding_l2 is not None and cfg.embedding.l2_reg > 0:
        comps["loss_embedding_l2"] = out.embedding_l2
        total = total + cfg.embedding.l2_reg * out.embedding_l2
    return LossResult(total=total.float(), components={k: v.float() for k, v in comps.items()})


# ---------------------------------------------------------------------------- positive weights


class PosWeights:
    """Positive-class weights for the CTR and CTCVR losses, per step.

    ``current(step) = {"ctr": min(base_ctr, clip_ctr(step)), "ctcvr": min(base_ctcvr, ...)}``.
    base: ``loss.static_pos_weight``, or with ``loss.pos_weight_dynamic`` the running
    ``(1 - r) / r`` of the labels seen so far through :meth:`observe` (r = clicks / rows for ctr,
    conversions / rows for ctcvr; the static value until a task's first positive).
    clip: ``pos_weight_clip_at(step, loss.pos_weight_clip_schedule)`` for the scheduled task(s)
    (schedule enabled, target ctr | ctcvr | both), ``loss.pos_weight_clip`` otherwise.

    Running counts stay on the labels' device (no synchronisation in :meth:`observe`);
    :meth:`current` reads them (one synchronisation) only in dynamic mode.
    """

    TASKS = ("ctr", "ctcvr")

    def __init__(self, cfg: Config) -> None:
        self.loss_cfg = cfg.loss
        self.dynamic = bool(cfg.loss.pos_weight_dynamic)
        self._pos: Tensor | None = None  # [2] float64: clicks, conversions
        self._rows: Tensor | None = None  # [] float64

    def observe(self, click: Tensor, conversion: Tensor) -> None:
        """Add one batch's labels to the running counts (no-op unless dynamic)."""
        if not self.dynamic:
            return
        pos = torch.stack([click.double().sum(), conversion.double().sum()])
        rows = torch.tensor(float(click.numel()), dtype=torch.float64, device=click.device)
        if self._pos is None:
            self._pos, self._rows = pos, rows
        else:
            self._pos = self._pos.to(pos.device) + pos
            self._rows = self._rows.to(rows.device) + rows

    def base(self) -> dict[str, float]:
        static = self.loss_cfg.static_pos_weight
        out = {"ctr": float(static.ctr), "ctcvr": float(static.ctcvr)}
        if self.dynamic and self._pos is not None:
            pos = self._pos.cpu().tolist()
            rows = float(self._rows.cpu())
            for i, task in enumerate(self.TASKS):
                if pos[i] > 0 and rows > 0:
                    r = pos[i] / rows
                    out[task] = (1.0 - r) / r
        return out

    def clip(self, step: int) -> dict[str, float]:
        sched = self.loss_cfg.pos_weight_clip_schedule
        static_clip = self.loss_cfg.pos_weight_clip
        out = {"ctr": float(static_clip.ctr), "ctcvr": float(static_clip.ctcvr)}
        if sched.enabled:
            scheduled = self.TASKS if sched.target == "both" else (sched.target,)
            value = pos_weight_clip_at(step, sched)
            for task in scheduled:
                out[task] = value
        return out

    def current(self, step: int) -> dict[str, float]:
        """``{"ctr": float, "ctcvr": float}`` for this step."""
        base, clip = self.base(), self.clip(step)
        return {t: min(base[t], clip[t]) for t in self.TASKS}

    def state_dict(self) -> dict[str, Any]:
        return {
            "pos": None if self._pos is None else self._pos.cpu().tolist(),
            "rows": None if self._rows is None else float(self._rows.cpu()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("pos") is None:
            self._pos = self._rows = None
        else:
            self._pos = torch.tensor(state["pos"], dtype=torch.float64)
            self._rows = torch.tensor(float(state["rows"]), dtype=torch.float64)
