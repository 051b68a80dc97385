"""The DeepFM + MMoE multi-task model, assembled from :class:`~rec_pipeline.config.Config` alone.

Notation: B batch, F fields, D = max embedding dim, E experts, T tasks.

Data flow (docs/model.md, Model)::

    batch -> FusedFieldEmbedding -> emb_stack [B,F,D], emb_concat [B,sum d_f],
                                    sum_emb / mean_emb [B,D], logit_linear [B]
    emb_concat -> deep MLP -> deep_h [B, deep_out]
    emb_stack  -> FM       -> fm_vec [B,D] (+ fm_logit [B] when a head adds it)
    source = deep_h                                  (default mode)
           = Linear(concat(deep_h, fm_vec) -> out_dim)   (legacy pseudo-DeepFM mode)
    composer({deep_h: source, fm_vec?, emb?}) -> x [B, out_dim]
    MMoE(x) -> mixed {task: [B,H]}, gates {task: [B,E]}
    head_t(mixed[t]) (+ logit_linear if per_head_add[t].use_wide) (+ fm_logit if .use_fm)

MMoE input width. The source document's model walk-through draws the adapter as ``Linear(384 -> 128) -> ReLU ->
Dropout(0.1) -> Linear(128 -> 128)`` for ``adapter_mlp_dims: [128]`` and ``out_dim: 128``: the
listed dims are hidden layers and a bare output Linear maps to ``backbone.out_dim``, exactly like
the heads (``mlp_dims`` hidden, then ``Linear(-> 1)``). So the MMoE input width is always
``backbone.out_dim``; ``adapter_mlp_dims: []`` leaves a single ``Linear(fused -> out_dim)``. The
adapter's dropout is that walk-through's 0.1 (:data:`ADAPTER_DROPOUT`; the config has no key for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..config import Config
from .bag_sums import resolve_kernel
from .embedding import BatchLike, FusedFieldEmbedding
from .fm import FMLayer, pair_count, pairwise_dots
from .heads import TaskHead
from .mlp import MLP
from .mmoe import MMoE, MMoEInputComposer

ADAPTER_DROPOUT = 0.1

#: :meth:`DeepFmMmoe.dense`'s result: logits, gates, logit_linear, fm_logit.
DenseOut = tuple[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor | None]


@dataclass
class ModelMeta:
    """What the model needs to know about the data (from the data's metadata).

    skeleton_fields / common_fields: model field names (``f0_205``, ``f1_101``) in config order;
        batch field positions index these lists.
    vocab_sizes: rows of each field's table, index 0 (padding / out-of-vocabulary) included.
    prior_rates: observed training positive rates, ``ctr`` = click rate, ``cvr`` = conversion
        rate among clicks; initialise the heads' output bias unless the head sets prior_rate.
    """

    skeleton_fields: list[str]
    common_fields: list[str]
    vocab_sizes: dict[str, int]
    prior_rates: dict[str, float] = field(default_factory=dict)

    @property
    def fields(self) -> list[str]:
        return list(self.skeleton_fields) + list(self.common_fields)


@dataclass
class ModelOutput:
    """Forward result.

    logits: ``{task: [B]}`` float32, after per_head_add.
    gates: ``{task: [B, E]}`` float32 gate weights.
    logit_linear: ``[B]`` first-order term (``None`` when ``return_logit_parts`` is false).
    fm_logit: ``[B]`` FM logit (``None`` unless some head adds it and parts are returned).
    training: whether the model was in training mode (the gate regulariser applies only then).
    embedding_l2: ``[]`` sum of squares of the table rows the batch read (training mode with
        ``embedding.l2_reg`` > 0, else ``None``).
    """

    logits: dict[str, Tensor]
    gates: dict[str, Tensor]
    logit_linear: Tensor | None = None
    fm_logit: Tensor | None = None
    training: bool = False
    embedding_l2: Tensor | None = None


# ----------------------------------------------------------------------------------------- plan


@dataclass
class _Plan:
    """Every width and switch of the model, resolved (and checked) from the config."""

    dims: dict[str, int]
    emb_dim: int
    concat_dim: int
    dense_dim: int  # width of the deep MLP's input: concat_dim (+ F with field values)
    deep_dims: list[int]
    deep_out: int
    deep_activation: str
    deep_dropout: float
    deep_use_bn: bool
    legacy: bool
    out_dim: int
    fm_needed: bool
    fm_logit: bool
    fm_projection_dim: int | None
    return_parts: bool
    per_head_add: dict[str, tuple[bool, bool]]
    part_dims: dict[str, int]
    add_emb: str
    priors: dict[str, float]
    head_inputs: dict[str, list[str]]  # per task: extra backbone parts fed to its head
    head_in_dims: dict[str, int]
    dots_needed: bool  # some head reads the pairwise field dot products
    wide_column: dict[str, int]  # per task adding a wide term: its first-order column

    @property
    def linear_terms(self) -> int:
        """First-order columns of the embedding tables (at least one)."""
        return 1 + max(self.wide_column.values(), default=0)


def _per_head_add(cfg: Config) -> dict[str, tuple[bool, bool]]:
    """Per task: (adds the wide term, adds the FM logit). Their consistency with the backbone
    mode and ``fm_enabled`` is checked with the parameters (``Config``), before any work."""
    bb = cfg.model.resolved_backbone()
    return {
        task: (
            bool(bb.per_head_add.get(task, {}).get("use_wide")),
            bool(bb.per_head_add.get(task, {}).get("use_fm")),
        )
        for task in cfg.model.tasks
    }


def _part_dims(cfg: Config, deep_out: int, emb_dim: int, dense_dim: int) -> dict[str, int]:
    """Width of each part the MMoE input composer fuses: deep_h, fm_vec?, emb?."""
    bb, mm = cfg.model.resolved_backbone(), cfg.model.mmoe
    part_dims = {"deep_h": bb.out_dim if bb.use_legacy_pseudo_deepfm else deep_out}
    if mm.add_fm_vec:
        part_dims["fm_vec"] = emb_dim
    if mm.add_emb in ("sum", "mean"):
        part_dims["emb"] = emb_dim
    elif mm.add_emb == "concat":
        part_dims["emb"] = dense_dim
    return part_dims


def _priors(cfg: Config, meta: ModelMeta) -> dict[str, float]:
    """Per task the positive rate its head's output bias starts at, inside (0, 1)."""
    priors = {}
    for task in cfg.model.tasks:
        p = cfg.model.heads.for_task(task).prior_rate
        if p is None:
            if task not in meta.prior_rates:
                raise ValueError(
                    f"no prior rate for task {task!r}: set model.heads.{task}.prior_rate or "
                    "give ModelMeta.prior_rates"
                )
            p = float(meta.prior_rates[task])
        # An empirical rate of exactly 0 or 1 (tiny data) is pulled into (0, 1).
        priors[task] = min(max(float(p), 1e-6), 1.0 - 1e-6)
    return priors


def _wide_columns(cfg: Config, per_head_add: dict[str, tuple[bool, bool]]) -> dict[str, int]:
    """First-order column of each task adding a wide term: shared (0) or one per task."""
    wide_tasks = [t for t in cfg.model.tasks if per_head_add[t][0]]
    if cfg.model.resolved_backbone().wide_per_task:
        return {t: i for i, t in enumerate(wide_tasks)}
    return {t: 0 for t in wide_tasks}


def _plan(cfg: Config, meta: ModelMeta) -> _Plan:
    bb, mm = cfg.model.resolved_backbone(), cfg.model.mmoe
    fields = meta.fields
    if not fields:
        raise ValueError("ModelMeta has no fields")
    dims = {f: cfg.embedding_dim(f) for f in fields}
    emb_dim, concat_dim = max(dims.values()), sum(dims.values())
    dense_dim = (
        concat_dim
        + (len(fields) if cfg.embedding.weight_channel == "dense" else 0)
        + len(cfg.embedding.value_vectors) * emb_dim
    )
    deep_dims = [int(d) for d in bb.deep_hidden_dims]
    deep_out = deep_dims[-1] if deep_dims else dense_dim
    per_head_add = _per_head_add(cfg)
    fm_logit = any(f for _, f in per_head_add.values())
    part_width = {
        "deep_h": deep_out,
        "emb": dense_dim,
        "fm_vec": emb_dim,
        "dots": pair_count(len(fields)),
    }
    head_inputs = {
        t: list(dict.fromkeys(cfg.model.heads.for_task(t).extra_inputs)) for t in cfg.model.tasks
    }
    head_in_dims = {
        t: mm.expert_mlp_dims[-1] + sum(part_width[k] for k in extra)
        for t, extra in head_inputs.items()
    }
    fm_needed = bb.fm_enabled and (
        bb.use_legacy_pseudo_deepfm
        or mm.add_fm_vec
        or fm_logit
        or any("fm_vec" in v for v in head_inputs.values())
    )
    return _Plan(
        dims=dims,
        emb_dim=emb_dim,
        concat_dim=concat_dim,
        dense_dim=dense_dim,
        deep_dims=deep_dims,
        deep_out=deep_out,
        deep_activation=bb.deep_activation,
        deep_dropout=bb.deep_dropout,
        deep_use_bn=bb.deep_use_bn,
        legacy=bb.use_legacy_pseudo_deepfm,
        out_dim=bb.out_dim,
        fm_needed=fm_needed,
        fm_logit=fm_logit,
        fm_projection_dim=bb.fm_projection_dim,
        return_parts=bb.return_logit_parts,
        per_head_add=per_head_add,
        part_dims=_part_dims(cfg, deep_out, emb_dim, dense_dim),
        add_emb=mm.add_emb,
        priors=_priors(cfg, meta),
        head_inputs=head_inputs,
        head_in_dims=head_in_dims,
        dots_needed=any("dots" in v for v in head_inputs.values()),
        wide_column=_wide_columns(cfg, per_head_add),
    )


# ---------------------------------------------------------------------------------------- model


class DeepFmMmoe(nn.Module):
    """DeepFM backbone + MMoE + per-task heads (see the module docstring for the data flow).

    ``forward(batch) -> ModelOutput``; batch attributes as in
    :class:`~rec_pipeline.model.embedding.BatchLike`.
    """

    def __init__(self, cfg: Config, meta: ModelMeta) -> None:
        super().__init__()
        plan = _plan(cfg, meta)
        self.plan = plan
        self.tasks = list(cfg.model.tasks)
        self.embedding = FusedFieldEmbedding(
            meta.skeleton_fields,
            meta.common_fields,
            meta.vocab_sizes,
            plan.dims,
            mode=cfg.embedding.mode,
            weight_channel=cfg.embedding.weight_channel,
            sparse=cfg.embedding.sparse_grad,
            init_std=cfg.embedding.init_std,
            linear_terms=plan.linear_terms,
            touched_l2=cfg.embedding.l2_reg > 0,
            value_vectors=cfg.embedding.value_vectors,
            kernel=resolve_kernel(cfg.runtime.pooling_kernel),
        )
        self.deep = MLP(
            plan.dense_dim,
            plan.deep_dims,
            activation=plan.deep_activation,
            dropout=plan.deep_dropout,
            use_bn=plan.deep_use_bn,
        )
        self.fm = (
            FMLayer(plan.emb_dim, with_logit=plan.fm_logit, projection_dim=plan.fm_projection_dim)
            if plan.fm_needed
            else None
        )
        self.legacy_proj = (
            nn.Linear(plan.deep_out + plan.emb_dim, plan.out_dim) if plan.legacy else None
        )
        self.composer, self.mmoe = _mixture(cfg, plan)
        self.heads = nn.ModuleDict({task: _head(cfg, plan, task) for task in self.tasks})

    def forward(self, batch: BatchLike) -> ModelOutput:
        stacked = self.embedding.pool(batch)  # [B, F, D + L (+ 1) (+ D)]
        logits, gates, logit_linear, fm_logit = self.dense(stacked)
        return ModelOutput(
            logits=logits,
            gates=gates,
            logit_linear=logit_linear if self.plan.return_parts else None,
            fm_logit=fm_logit if self.plan.return_parts else None,
            training=self.training,
            embedding_l2=self.embedding.touched_rows_l2(batch),
        )

    def dense(self, stacked: Tensor) -> DenseOut:
        """Everything above the bag pooling, from ``stacked [B, F, D + L (+ 1) (+ D)]``: fixed shapes
        for a fixed B and no data-dependent control flow, so it can be compiled as one piece.

        Returns ``(logits {task: [B]}, gates {task: [B, E]}, logit_linear [B], fm_logit [B] |
        None)``.
        """
        plan = self.plan
        emb = self.embedding.split(stacked)
        dense_input = emb.dense_input  # [B, dense_dim]
        deep_h = self.deep(dense_input)  # [B, deep_out]
        fm_vec: Tensor | None = None
        fm_logit: Tensor | None = None
        if self.fm is not None:
            fm_vec, fm_logit = self.fm(emb.emb_stack)  # [B, D], [B] | None
        if self.legacy_proj is not None:
            source = self.legacy_proj(torch.cat([deep_h, fm_vec.to(deep_h.dtype)], dim=-1))
        else:
            source = deep_h
        parts = {"deep_h": source}
        if "fm_vec" in plan.part_dims:
            parts["fm_vec"] = fm_vec
        if plan.add_emb == "sum":
            parts["emb"] = emb.sum_emb
        elif plan.add_emb == "mean":
            parts["emb"] = emb.mean_emb
        elif plan.add_emb == "concat":
            parts["emb"] = dense_input
        x = self.composer(parts)  # [B, out_dim]
        mixed, gates = self.mmoe(x)
        skips = {"deep_h": deep_h, "emb": dense_input, "fm_vec": fm_vec}
        if plan.dots_needed:
            skips["dots"] = pairwise_dots(emb.emb_stack)  # [B, F (F - 1) / 2]
        logits = {}
        for task in self.tasks:
            head_in = mixed[task]  # [B, H]
            if plan.head_inputs[task]:
                extra = [skips[k].to(head_in.dtype) for k in plan.head_inputs[task]]
                head_in = torch.cat([head_in, *extra], dim=-1)  # [B, head_in_dims[task]]
            logit = self.heads[task](head_in).float()
            use_wide, use_fm = plan.per_head_add[task]
            if use_wide:
                logit = logit + emb.linear_terms[:, plan.wide_column[task]].float()
            if use_fm:
                logit = logit + fm_logit.float()
            logits[task] = logit
        return logits, gates, emb.logit_linear, fm_logit

    # ------------------------------------------------------------------------- parameter groups

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Embedding tables when ``embedding.sparse_grad`` (for the sparse optimiser), else []."""
        return self.embedding.sparse_parameters()

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every parameter not in :meth:`sparse_parameters` (for AdamW)."""
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Dense parameters every task's loss reaches: deep MLP, legacy projection, composer,
        MMoE LayerNorm and experts (used for per-task gradient diagnostics)."""
        mods: list[nn.Module | None] = [
            self.deep,
            self.legacy_proj,
            self.composer,
            self.mmoe.norm,
            self.mmoe.experts,
        ]
        return [p for m in mods if m is not None for p in m.parameters()]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The task's own parameters: its head and its gate."""
        return list(self.heads[task].parameters()) + list(self.mmoe.gates[task].parameters())


def _mixture(cfg: Config, plan: _Plan) -> tuple[MMoEInputComposer, MMoE]:
    """The MMoE input composer (parts -> [B, out_dim]) and the MMoE over its output."""
    mm = cfg.model.mmoe
    gs = mm.gate_stabilize
    composer = MMoEInputComposer(
        plan.part_dims,
        proj_dim=mm.part_proj_dim,
        norm=mm.norm,
        dropout=mm.dropout,
        fusion=mm.fusion,
        adapter_dims=mm.adapter_mlp_dims,
        adapter_dropout=ADAPTER_DROPOUT,
        out_dim=plan.out_dim,
    )
    mmoe = MMoE(
        composer.out_dim,
        list(cfg.model.tasks),
        num_experts=mm.num_experts,
        expert_dims=mm.expert_mlp_dims,
        dropout=mm.dropout,
        gate_type=mm.gate_type,
        gate_hidden_dims=mm.gate_hidden_dims,
        stabilize=gs.enabled,
        temperature=gs.temperature,
        noise_std=gs.noise_std,
    )
    return composer, mmoe


def _head(cfg: Config, plan: _Plan, task: str) -> TaskHead:
    """The task's tower: [B, head_in_dims[task]] -> logit [B]."""
    h = cfg.model.heads.for_task(task)
    return TaskHead(
        plan.head_in_dims[task],
        h.mlp_dims,
        activation=h.activation,
        dropout=h.dropout,
        use_bn=h.use_bn,
        prior_rate=plan.priors[task],
    )


def build_model(cfg: Config, meta: ModelMeta) -> DeepFmMmoe:
    """The model described by ``cfg.model`` / ``cfg.embedding`` for the data described by meta."""
    return DeepFmMmoe(cfg, meta)


# ------------------------------------------------------------------------------ parameter counts


def _numel(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_counts(model: DeepFmMmoe) -> dict[str, int]:
    """Parameters per component of a built model, plus ``dense_total`` and ``total``.

    Keys: embedding, deep, fm, legacy_proj, composer_parts, adapter, mmoe_norm, experts, gates,
    head_<task> for each task, dense_total (all but embedding), total.
    """
    counts = {
        "embedding": _numel(model.embedding),
        "deep": _numel(model.deep),
        "fm": _numel(model.fm),
        "legacy_proj": _numel(model.legacy_proj),
        "composer_parts": _numel(model.composer.parts),
        "adapter": _numel(model.composer.adapter),
        "mmoe_norm": _numel(model.mmoe.norm),
        "experts": _numel(model.mmoe.experts),
        "gates": _numel(model.mmoe.gates),
    }
    for task in model.tasks:
        counts[f"head_{task}"] = _numel(model.heads[task])
    counts["dense_total"] = sum(v for k, v in counts.items() if k != "embedding")
    counts["total"] = counts["dense_total"] + counts["embedding"]
    return counts
