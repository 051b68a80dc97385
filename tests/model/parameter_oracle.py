"""Closed-form parameter counts of the model, written from the architecture (a test oracle).

``Linear(i -> o) = i*o + o``, ``LayerNorm(d) = BatchNorm1d(d) = 2d``, PReLU 1; the fused tables
hold ``(sum_f vocab_f) * (D + L)`` values (vector columns + the first-order columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rec_pipeline.config import Config
from rec_pipeline.model.builder import ModelMeta


def linear_parameter_count(in_dim: int, out_dim: int, bias: bool = True) -> int:
    """``Linear(i -> o)`` has ``i*o + o`` parameters (with bias)."""
    return in_dim * out_dim + (out_dim if bias else 0)


def mlp_parameter_count(
    in_dim: int,
    hidden_dims: Sequence[int] = (),
    *,
    activation: str = "relu",
    use_bn: bool = False,
    out_dim: int | None = None,
) -> int:
    """Closed-form parameter count of :class:`MLP` with the same arguments.

    Per hidden layer: Linear ``i*h + h``, BatchNorm1d ``2h`` (weight and bias; running stats are
    buffers), PReLU ``1``. Output layer: ``last*out + out``.
    """
    total = 0
    width = int(in_dim)
    for h in hidden_dims:
        total += linear_parameter_count(width, int(h))
        if use_bn:
            total += 2 * int(h)
        total += 1 if activation == "prelu" else 0
        width = int(h)
    if out_dim is not None:
        total += linear_parameter_count(width, int(out_dim))
    return total


@dataclass
class Widths:
    """The layer widths of the architecture, read from the config (docs/model.md) without the
    model's own plan."""

    emb_dim: int  # D
    dense_dim: int  # input of the deep MLP: sum d_f (+ F with dense field values)
    deep_out: int
    linear_terms: int  # first-order columns L
    part_dims: list[int]  # MMoE composer inputs, in order deep_h, fm_vec?, emb?
    head_in: dict[str, int]  # per task: mixture width + skip inputs


def widths(cfg: Config, meta: ModelMeta) -> Widths:
    bb, mm = cfg.model.resolved_backbone(), cfg.model.mmoe
    dims = [cfg.embedding_dim(f) for f in meta.fields]
    emb_dim = max(dims)
    dense_dim = sum(dims) + (len(dims) if cfg.embedding.weight_channel == "dense" else 0)
    deep_out = list(bb.deep_hidden_dims)[-1] if bb.deep_hidden_dims else dense_dim
    n_wide = sum(bool(bb.per_head_add.get(t, {}).get("use_wide")) for t in cfg.model.tasks)
    linear_terms = max(n_wide, 1) if bb.wide_per_task else 1
    part_dims = [bb.out_dim if bb.use_legacy_pseudo_deepfm else deep_out]
    if mm.add_fm_vec:
        part_dims.append(emb_dim)
    if mm.add_emb != "none":
        part_dims.append(dense_dim if mm.add_emb == "concat" else emb_dim)
    n = len(dims)
    skip = {"deep_h": deep_out, "emb": dense_dim, "fm_vec": emb_dim, "dots": n * (n - 1) // 2}
    head_in = {
        t: mm.expert_mlp_dims[-1]
        + sum(skip[k] for k in set(cfg.model.heads.for_task(t).extra_inputs))
        for t in cfg.model.tasks
    }
    return Widths(emb_dim, dense_dim, deep_out, linear_terms, part_dims, head_in)


def expected_parameter_counts(cfg: Config, meta: ModelMeta) -> dict[str, int]:
    """The keys of :func:`~rec_pipeline.model.builder.parameter_counts`, in closed form from
    the config and meta."""
    bb, mm = cfg.model.resolved_backbone(), cfg.model.mmoe
    w = widths(cfg, meta)
    rows = sum(int(meta.vocab_sizes[f]) for f in meta.fields)
    counts = {"embedding": rows * (w.emb_dim + w.linear_terms)}
    if cfg.embedding.weight_channel == "dense":
        counts["embedding"] += len(meta.fields) * w.linear_terms  # value_coef
    counts["deep"] = mlp_parameter_count(
        w.dense_dim, bb.deep_hidden_dims, activation=bb.deep_activation, use_bn=bb.deep_use_bn
    )
    fm_logit = any(bb.per_head_add.get(t, {}).get("use_fm") for t in cfg.model.tasks)
    p = bb.fm_projection_dim
    counts["fm"] = (
        linear_parameter_count(w.emb_dim, p) + linear_parameter_count(p, 1)
        if fm_logit and p is not None
        else 0
    )
    counts["legacy_proj"] = (
        linear_parameter_count(w.deep_out + w.emb_dim, bb.out_dim)
        if bb.use_legacy_pseudo_deepfm
        else 0
    )
    proj = [d if mm.part_proj_dim is None else mm.part_proj_dim for d in w.part_dims]
    counts["composer_parts"] = sum(
        (0 if mm.part_proj_dim is None else linear_parameter_count(d, mm.part_proj_dim))
        + (2 * q if mm.norm == "layernorm" else 0)
        for d, q in zip(w.part_dims, proj, strict=True)
    )
    fused = sum(proj) if mm.fusion == "concat" else proj[0]
    counts["adapter"] = mlp_parameter_count(fused, mm.adapter_mlp_dims, out_dim=bb.out_dim)
    counts["mmoe_norm"] = 2 * bb.out_dim
    e = mm.num_experts
    counts["experts"] = e * mlp_parameter_count(bb.out_dim, mm.expert_mlp_dims)
    hidden = mm.gate_hidden_dims if mm.gate_type == "mlp" else []
    counts["gates"] = len(cfg.model.tasks) * mlp_parameter_count(bb.out_dim, hidden, out_dim=e)
    for task in cfg.model.tasks:
        h = cfg.model.heads.for_task(task)
        counts[f"head_{task}"] = mlp_parameter_count(
            w.head_in[task], h.mlp_dims, activation=h.activation, use_bn=h.use_bn, out_dim=1
        )
    counts["dense_total"] = sum(v for k, v in counts.items() if k != "embedding")
    counts["total"] = counts["dense_total"] + counts["embedding"]
    return counts
