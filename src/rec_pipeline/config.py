"""Typed parameters: ``parameters.yml`` parsed once into pydantic models.

The defaults written here are the product's defaults, and the only place they are written:
``conf/base/parameters.yml`` shows the same values with their comments (a test keeps the two
equal) and ``conf/aliccp`` overrides only what the source recipe sets differently. Every key of
the source recipe is accepted; the few that have no effect are listed in :data:`IGNORED_KEYS`
and named in one warning per run. An unknown key, a wrong type or an inconsistent combination
raises :class:`ConfigError` naming the dotted key and what was expected, before any work starts.
docs/model.md describes what each model, loss and metric option means.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# Ali-CCP's 23 fields, split by the file they live in (docs/model.md, Data).
ALICCP_SKELETON_FIELDS = ["205", "206", "207", "216", "210", "508", "509", "702", "853", "301"]
ALICCP_COMMON_FIELDS = [
    "101",
    "121",
    "122",
    "124",
    "125",
    "126",
    "127",
    "128",
    "129",
    "109_14",
    "110_14",
    "127_14",
    "150_14",
]


# A step count, or a fraction of the run: a float in (0, 1) means that share of the training run's
# total steps (the LR schedule's span), resolved when training starts
# (rec_pipeline.train.schedules.resolve_step_fractions). Lets one configuration keep its
# schedule's shape on data of any size.
Steps = int | float


def _count_or_auto(v: int | str) -> int | str:
    if v != "auto" and v < 1:
        raise ValueError("must be >= 1 or 'auto'")
    return v


# A number of processes or devices, or "auto" for all there are.
CountOrAuto = Annotated[int | Literal["auto"], AfterValidator(_count_or_auto)]


def _check_steps(value: float, key: str) -> None:
    if isinstance(value, float) and not 0.0 < value < 1.0:
        raise ValueError(f"{key}: a float is a fraction of the run and must lie in (0, 1)")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{key}: a step count must be >= 0")


# Keys of the source recipe that are accepted but change nothing, with the reason; a run that
# sets one gets one warning naming them all (ignored_keys), so that nobody believes they act.
IGNORED_KEYS = {
    "data.metadata_path": "the catalog decides where metadata lives",
    "data.num_workers": "the data sits in tensors on the device: no loader workers",
    "data.num_workers_valid": "no loader workers",
    "data.prefetch_factor": "no loader workers",
    "data.pin_memory": "no loader workers",
    "data.persistent_workers": "no loader workers",
    "data.debug": "no debug mode",
    "model.name": "experiment.name names the run",
    "model.mtl": "MMoE is the only multi-task layer",
    "model.mmoe.input": "the experts always read deep_h",
    "model.mmoe.log_gates": "gate statistics follow runtime.log_health_metrics",
    "model.mmoe.gate_stabilize.log_stats": "gate statistics follow runtime.log_health_metrics",
    "loss.aux_focal.target_head": "the focal term always acts on CTCVR",
    "loss.aux_focal.log_components": "every loss component is always logged",
}


def ignored_keys(parameters: dict[str, Any]) -> list[str]:
    """The :data:`IGNORED_KEYS` that ``parameters`` sets, in the order of that table."""
    found = []
    for key in IGNORED_KEYS:
        node: Any = parameters
        for part in key.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is not _ABSENT:
            found.append(key)
    model = parameters.get("model") or {}
    if model.get("backbone") is not None:
        found += [f"model.{k}" for k in FLAT_BACKBONE_KEYS if k in model]
    return found


_ABSENT = object()


class ConfigError(ValueError):
    """A parameter is unknown, of the wrong type, or inconsistent with another one."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------------------------- data


class FieldsConfig(_Model):
    """Field ids per raw file. Model field names are ``f0_<id>`` (skeleton) and ``f1_<id>``."""

    skeleton: list[str] = Field(default_factory=lambda: list(ALICCP_SKELETON_FIELDS))
    common: list[str] = Field(default_factory=lambda: list(ALICCP_COMMON_FIELDS))

    @field_validator("skeleton", "common")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        v = [str(x) for x in v]
        if len(set(v)) != len(v):
            raise ValueError("field ids must be unique")
        for f in v:
            if not f or len(f.encode()) > 8 or any(c in f for c in ",\x01\x02\x03\n"):
                raise ValueError(f"field id {f!r} must be a short token (at most 8 bytes)")
        return v

    def names(self) -> list[str]:
        return [f"f0_{f}" for f in self.skeleton] + [f"f1_{f}" for f in self.common]


class DataConfig(_Model):
    # Accepted for compatibility with the source recipe (tests/fixtures/source_recipe.yml); the
    # catalog decides where data lives.
    metadata_path: str | None = None
    batch_size: int = Field(1024, gt=0)
    # DataLoader knobs of the source recipe. The tensor-resident loader has no worker processes,
    # so these are accepted and recorded but have no effect.
    num_workers: int = Field(0, ge=0)
    num_workers_valid: int = Field(0, ge=0)
    prefetch_factor: int | None = Field(None, ge=1)
    pin_memory: bool = True
    persistent_workers: bool = False
    drop_last: bool = False
    debug: bool = False
    seed: int = 20260127
    neg_keep_prob_train: float = Field(0.4, gt=0.0, le=1.0)
    # Raises that rate, up to 1, so that about this many training negatives are kept: a small
    # log keeps more of its rows. None: the rate alone, as in the source recipe.
    neg_keep_at_least: int | None = Field(450_000, ge=0)

    source: Literal["synthetic", "files"] = "synthetic"
    # The source recipe's share; 0.1 left the CVR tower, which learns from clicks only, fewer
    # of them: 0.05 measured +0.0026 AUC primary on world2 (five seeds, CVR up on each).
    valid_fraction: float = Field(0.05, gt=0.0, lt=1.0)
    fields: FieldsConfig = Field(default_factory=FieldsConfig)
    chunk_mb: int = Field(16, gt=0)
    # Processes that parse the raw files' chunks, and then encode the parsed shards, at once: a
    # count, or auto for every core (fewer than four chunks are done in the calling process).
    workers: CountOrAuto = "auto"
    # How lines are read: compiled (machine code, one pass per line) or numpy (vectorised
    # passes over each slice). The output is the same; numpy is there to compare against.
    tokenizer: Literal["compiled", "numpy"] = "compiled"


class SamplingConfig(_Model):
    negative_sampling: Literal["none", "random"] = "none"


class VocabConfig(_Model):
    min_count: int = Field(2, ge=1)
    # Per-field caps, keyed by model field name (f0_205): keep the most frequent ids.
    max_size: dict[str, int] = Field(default_factory=dict)
    # Per-field hashing instead of a vocabulary: index = 1 + hash(raw id) mod buckets.
    hash_buckets: dict[str, int] = Field(default_factory=dict)


class SyntheticParams(_Model):
    """Size, shape and seed of the planted-truth data (``rec_pipeline.data.synthetic``).

    ``n_train_rows`` / ``n_test_rows`` are exact impression counts. To scale to tens of millions
    of rows, scale ``n_users`` and ``n_items`` too (otherwise each user owns very many records).
    The generator's own type, ``SyntheticConfig``, derives from this class and adds only the
    fingerprint; ``rec_pipeline/data/synthetic/__init__.py`` documents what each key does.
    """

    # Frozen: the fingerprint of the files written for a config must not drift under them.
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    n_train_rows: int = Field(2_000_000, strict=True, gt=0)
    n_test_rows: int = Field(400_000, strict=True, gt=0)
    impressions_per_common: float = Field(20.0, strict=True, ge=1.0)
    n_users: int = Field(4_000, strict=True, gt=0)
    n_items: int = Field(5_000, strict=True, gt=0)
    n_categories: int = Field(600, strict=True, gt=0)
    n_shops: int = Field(4_000, strict=True, gt=0)
    n_brands: int = Field(2_500, strict=True, gt=0)
    n_intentions: int = Field(1_500, strict=True, gt=0)
    n_topics: int = Field(24, strict=True, gt=0)
    n_positions: int = Field(4, strict=True, gt=0)
    latent_dim: int = Field(8, strict=True, gt=0)
    # Idiosyncratic part of the user / item latent vectors, relative to the profile / category
    # part. The profile and category parts are learnable through field interactions; the
    # idiosyncratic part only through user-id x item-id pairs, which no realistic amount of
    # data pins down, so a large value makes the oracle unreachable by any model.
    latent_noise: float = Field(0.35, strict=True, ge=0.0)
    # Mean number of 14-day behaviour events of a common record (sets the behaviour list
    # lengths); the upper bound is also the generator's cap on one record's events.
    behaviour_events_mean: float = Field(100.0, strict=True, ge=1.0, le=4000)
    # Probability that an impressed item comes from the user's interest topics.
    relevance: float = Field(0.7, strict=True, ge=0.0, le=1.0)
    item_zipf: float = Field(0.85, strict=True, ge=0.0)
    # Multiplies the interaction terms (<u,v>, profile x category, behaviour affinity).
    interaction_scale: float = Field(1.0, strict=True, ge=0.0)
    ctr_rate: float = Field(0.045, strict=True, gt=0.0, lt=1.0)
    cvr_rate: float = Field(0.07, strict=True, gt=0.0, lt=1.0)
    seed: int = Field(20260127, strict=True)
    chunk_rows: int = Field(200_000, strict=True, gt=0)
    # Processes that draw and write chunks of chunk_rows rows at once: a count, or auto for
    # every core (fewer than four chunks in all are written by the calling process). The files
    # are the same bytes whatever the count.
    workers: CountOrAuto = "auto"
    # Share of test common records whose user never appears in train: a separate pool of
    # round(n_users * f / (1 - f)) users (own ids, profiles, latent vectors and topics, drawn
    # from the same distributions), so a new user owns about as many test records as an old one.
    # The bound keeps the pool finite (it grows as f / (1 - f)).
    test_new_user_fraction: float = Field(0.0, strict=True, ge=0.0, le=0.9)
    # Share of test impressions whose item never appears in train: a separate pool of
    # round(n_items * f / (1 - f)) items (at least n_topics) that exist only in the test period,
    # with the usual categories, shops, brands and intention nodes.
    test_new_item_fraction: float = Field(0.0, strict=True, ge=0.0, le=0.9)
    # How the behaviour affinity depends on the cross fields' counts: "linear" (sum of the
    # written values ln(1 + count)) or "saturating" (per-entity slope times a Hill function of
    # the count around a per-entity threshold, a non-linear function of the written value).
    affinity_shape: Literal["linear", "saturating"] = "linear"

    @model_validator(mode="after")
    def _check(self) -> SyntheticParams:
        # Every topic needs at least one member of each vocabulary drawn from topics.
        for name in ("n_items", "n_categories", "n_shops", "n_brands", "n_intentions"):
            if getattr(self, name) < self.n_topics:
                raise ValueError(f"{name} must be >= n_topics ({self.n_topics})")
        return self

    def build(self):
        """The generator's config (``rec_pipeline.data.synthetic.SyntheticConfig``)."""
        from rec_pipeline.data.synthetic import SyntheticConfig

        return SyntheticConfig(**self.model_dump())


# -------------------------------------------------------------------------------------------- model


class EmbeddingConfig(_Model):
    default_embedding_dim: int = Field(12, gt=0)
    embedding_dim_overrides: dict[str, int] = Field(default_factory=dict)
    # Pooling of a bag: mean = sum(w*e)/sum(w), sum = sum(w*e). The source recipe writes "sum"
    # with a note that the pooling is actually the weighted mean; docs/model.md, Model reads it as mean.
    mode: Literal["mean", "sum"] = "mean"
    # How a bag's weights (Ali-CCP's cross-field intensities) reach the network beyond the
    # pooling: none (the source's weighted mean), scale (mean of w*e over the bag's ids) or
    # dense (each bag's mean weight as a dense input per field). rec_pipeline.model.embedding.
    weight_channel: Literal["none", "scale", "dense"] = "dense"
    # Model field names (f0_508, ...) whose value-scaled vector, the mean of w*e over the bag's
    # ids, is also an input beside the pooled vector: with both, a linear layer can give each id
    # its own intercept and its own slope in the value (docs/model.md, "Feature values"). []: off.
    value_vectors: list[str] = Field(default_factory=list)
    sparse_grad: bool = True
    # Std of the normal init of the embedding vectors (source: unspecified). 0.03 measured best
    # of 0.001 / 0.01 / 0.03 / 0.1 (benchmarks/README.md, "Model quality").
    init_std: float = Field(0.03, gt=0.0)
    # L2 penalty on the table rows a step reads (each distinct row once a step, so a frequent id
    # is pulled to 0 more often): the loss adds l2_reg * sum of their squares. 0: off.
    l2_reg: float = Field(1e-4, ge=0.0)
    # Training only: per model field name (f0_205, f1_101), the probability of replacing an id
    # by the field's out-of-vocabulary row 0, so that row learns what a user or item unseen in
    # training looks like (rec_pipeline.train.oov_dropout). {}: off.
    oov_dropout: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> EmbeddingConfig:
        for name, rate in self.oov_dropout.items():
            if not 0.0 <= float(rate) < 1.0:
                raise _Inconsistent(f"embedding.oov_dropout.{name}", "a rate in [0, 1)", rate)
        if self.weight_channel == "scale" and self.mode != "mean":
            raise ValueError("weight_channel 'scale' needs mode 'mean' (a sum keeps the weights)")
        return self


Activation = Literal["relu", "gelu", "silu", "tanh", "prelu", "leaky_relu"]


class BackboneConfig(_Model):
    use_legacy_pseudo_deepfm: bool = False
    return_logit_parts: bool = True
    per_head_add: dict[str, dict[str, bool]] = Field(
        default_factory=lambda: {
            "ctr": {"use_wide": True, "use_fm": True},
            "cvr": {"use_wide": True, "use_fm": False},
        }
    )
    # Each task that adds the wide term (per_head_add.<task>.use_wide) gets first-order weights
    # of its own instead of sharing one set (the source's behaviour).
    wide_per_task: bool = True
    deep_hidden_dims: list[int] = Field(default_factory=lambda: [128, 64])
    deep_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    deep_activation: Activation = "relu"
    deep_use_bn: bool = False
    fm_enabled: bool = True
    # null: fm_logit = sum(fm_vec); int: fm_logit = MLP(D -> fm_projection_dim -> 1)(fm_vec).
    fm_projection_dim: int | None = Field(16, gt=0)
    out_dim: int = Field(64, gt=0)

    @field_validator("per_head_add")
    @classmethod
    def _per_head_keys(cls, v: dict[str, dict[str, bool]]) -> dict[str, dict[str, bool]]:
        for task, flags in v.items():
            extra = set(flags) - {"use_wide", "use_fm"}
            if extra:
                raise ValueError(
                    f"per_head_add.{task}: unknown key(s) {sorted(extra)}; expected use_wide, use_fm"
                )
        return v


class GateStabilizeConfig(_Model):
    enabled: bool = True
    temperature: float = Field(1.2, gt=0.0)
    noise_std: float = Field(0.05, ge=0.0)
    eps: float = Field(1e-8, gt=0.0)
    entropy_reg_weight: float = Field(1e-3, ge=0.0)
    load_balance_kl_weight: float = Field(1e-3, ge=0.0)
    log_stats: bool = True


class MMoEConfig(_Model):
    num_experts: int = Field(4, gt=0)
    expert_mlp_dims: list[int] = Field(default_factory=lambda: [128])
    gate_type: Literal["linear", "mlp"] = "linear"
    gate_hidden_dims: list[int] = Field(default_factory=list)
    input: Literal["deep_h"] = "deep_h"
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    log_gates: bool = True
    gate_stabilize: GateStabilizeConfig = Field(default_factory=GateStabilizeConfig)
    add_fm_vec: bool = True
    add_emb: Literal["none", "sum", "mean", "concat"] = "concat"
    part_proj_dim: int | None = Field(128, gt=0)
    fusion: Literal["concat", "sum"] = "concat"
    adapter_mlp_dims: list[int] = Field(default_factory=lambda: [128])
    norm: Literal["none", "layernorm"] = "layernorm"

    @model_validator(mode="after")
    def _check(self) -> MMoEConfig:
        if self.gate_type == "mlp" and not self.gate_hidden_dims:
            raise ValueError("gate_type 'mlp' needs non-empty gate_hidden_dims")
        if not self.expert_mlp_dims:
            raise ValueError("expert_mlp_dims must not be empty")
        return self


HeadInput = Literal["deep_h", "emb", "fm_vec", "dots"]


class ResolvedHead(_Model):
    """A task tower's settings; the field defaults are the towers' defaults."""

    mlp_dims: list[int] = Field(default_factory=lambda: [512])
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    use_bn: bool = False
    activation: Activation = "relu"
    # Output bias = log(p/(1-p)); null takes p from the training data's positive rate.
    prior_rate: float | None = Field(None, gt=0.0, lt=1.0)
    # Backbone parts concatenated to the task's expert mixture as the head's input (skip
    # connections around the MMoE): deep_h, emb (emb_concat and any field values), fm_vec, dots
    # (every field pair's embedding dot product, F (F - 1) / 2 values).
    extra_inputs: list[HeadInput] = Field(default_factory=lambda: ["emb", "dots"])


class HeadConfig(_Model):
    """Overrides of :class:`ResolvedHead`: a key left out (or null) keeps the value below it."""

    mlp_dims: list[int] | None = None
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    use_bn: bool | None = None
    activation: Activation | None = None
    prior_rate: float | None = Field(None, gt=0.0, lt=1.0)
    extra_inputs: list[HeadInput] | None = None

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class HeadsConfig(_Model):
    """``default`` overrides the tower defaults for every task; ``ctr``/``cvr`` override it."""

    default: HeadConfig = Field(default_factory=HeadConfig)
    ctr: HeadConfig = Field(default_factory=HeadConfig)
    cvr: HeadConfig = Field(default_factory=lambda: HeadConfig(dropout=0.5))

    def for_task(self, task: str) -> ResolvedHead:
        """The tower defaults, then ``default``'s overrides, then this task's."""
        return ResolvedHead.model_validate(
            {**self.default.overrides(), **getattr(self, task).overrides()}
        )


# Flat backbone keys of the source recipe. They set model.backbone's keys when the recipe has no
# `model.backbone` section; next to one, they are ignored (and named in the run's warning).
FLAT_BACKBONE_KEYS = (
    "deep_hidden_dims",
    "deep_dropout",
    "deep_activation",
    "deep_use_bn",
    "fm_enabled",
    "fm_projection_dim",
    "out_dim",
)


class ModelConfig(_Model):
    name: str = "deepfm_mmoe"
    mtl: Literal["mmoe"] = "mmoe"
    enabled_heads: list[Literal["ctr", "cvr"]] = Field(default_factory=lambda: ["ctr", "cvr"])
    tasks: list[Literal["ctr", "cvr"]] = Field(default_factory=lambda: ["ctr", "cvr"])
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    mmoe: MMoEConfig = Field(default_factory=MMoEConfig)
    heads: HeadsConfig = Field(default_factory=HeadsConfig)
    # FLAT_BACKBONE_KEYS: typed and validated by BackboneConfig (no defaults of their own).
    deep_hidden_dims: list[int] | None = None
    deep_dropout: float | None = None
    deep_activation: Activation | None = None
    deep_use_bn: bool | None = None
    fm_enabled: bool | None = None
    fm_projection_dim: int | None = None
    out_dim: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _flat_keys_fill_a_missing_backbone(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("backbone") is None:
            flat = {k: data[k] for k in FLAT_BACKBONE_KEYS if data.get(k) is not None}
            data = {**data, "backbone": flat}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError("tasks must be unique")
        missing = [h for h in self.enabled_heads if h not in self.tasks]
        if missing:
            raise ValueError(f"enabled_heads {missing} are not in tasks {self.tasks}")
        return self

    def resolved_backbone(self) -> BackboneConfig:
        """The backbone's settings (the flat keys already folded in when it was absent)."""
        return self.backbone


# ------------------------------------------------------------------------------------ optimisation


class DenseOptimConfig(_Model):
    lr: float = Field(6e-4, gt=0.0)
    weight_decay: float = Field(1e-5, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)


class SparseOptimConfig(_Model):
    enabled: bool = True
    # The tables' update rule: sparse Adagrad's or SparseAdam's (the source's; both in
    # train/row_optimizers.py). Adagrad measured better on both synthetic worlds
    # (benchmarks/README.md, "Model quality"). lr is the rule's own rate (Adam's best was 2e-3,
    # Adagrad's 0.1); betas are Adam's, initial_accumulator_value Adagrad's.
    type: Literal["adagrad", "adam"] = "adagrad"
    lr: float = Field(0.1, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    initial_accumulator_value: float = Field(0.0, ge=0.0)
    allow_fallback_if_empty: bool = False


class LRSchedulerConfig(_Model):
    enabled: bool = True
    target: Literal["dense", "both"] = "both"
    type: Literal["cosine", "step"] = "cosine"
    warmup_steps: Steps = 0.125
    # null: derived from the data size x epochs, capped by runtime.max_train_steps.
    total_steps: int | None = Field(None, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    step_milestones: list[Steps] = Field(default_factory=list)
    step_gamma: float = Field(0.1, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> LRSchedulerConfig:
        _check_steps(self.warmup_steps, "warmup_steps")
        for m in self.step_milestones:
            _check_steps(m, "step_milestones")
        warmup_is_count = isinstance(self.warmup_steps, int)
        if (
            self.total_steps is not None
            and warmup_is_count
            and self.warmup_steps >= self.total_steps
        ):
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be < total_steps ({self.total_steps})"
            )
        kinds = {type(m) for m in self.step_milestones}
        if len(kinds) > 1:
            raise ValueError("step_milestones must be all step counts or all fractions")
        if sorted(self.step_milestones) != self.step_milestones:
            raise ValueError("step_milestones must be increasing")
        return self


class OptimConfig(_Model):
    type: Literal["dual_sparse_dense", "dense"] = "dual_sparse_dense"
    dense: DenseOptimConfig = Field(default_factory=DenseOptimConfig)
    sparse: SparseOptimConfig = Field(default_factory=SparseOptimConfig)
    lr_scheduler: LRSchedulerConfig = Field(default_factory=LRSchedulerConfig)


class TaskPair(_Model):
    ctr: float = Field(1.0, gt=0.0)
    ctcvr: float = Field(1.0, gt=0.0)


class PosWeightScheduleConfig(_Model):
    enabled: bool = True
    target: Literal["ctcvr", "ctr", "both"] = "ctcvr"
    type: Literal["piecewise", "linear"] = "piecewise"
    milestones: list[Steps] = Field(default_factory=lambda: [0, 0.2])
    values: list[float] = Field(default_factory=lambda: [300.0, 30.0])
    start_step: int = Field(0, ge=0)
    end_step: int = Field(1, ge=0)
    start_value: float = Field(1.0, gt=0.0)
    end_value: float = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> PosWeightScheduleConfig:
        for m in self.milestones:
            _check_steps(m, "milestones")
        if len({type(m) for m in self.milestones[1:]}) > 1:
            raise ValueError("milestones must be all step counts or all fractions (after the 0)")
        if self.type == "piecewise":
            if len(self.milestones) != len(self.values) or not self.milestones:
                raise ValueError("milestones and values must be non-empty and of equal length")
            if sorted(self.milestones) != self.milestones or self.milestones[0] != 0:
                raise ValueError("milestones must be increasing and start at 0")
            if any(v <= 0 for v in self.values):
                raise ValueError("values must be > 0")
        elif self.end_step <= self.start_step:
            raise ValueError("end_step must be > start_step")
        return self


class AuxFocalConfig(_Model):
    enabled: bool = True
    warmup_steps: Steps = 0.2
    target_head: Literal["ctcvr"] = "ctcvr"
    lambda_: float = Field(0.05, ge=0.0, alias="lambda")
    gamma: float = Field(1.0, ge=0.0)
    use_alpha: bool = False
    alpha: float = Field(0.25, gt=0.0, lt=1.0)
    detach_p_for_weight: bool = True
    compute_fp32: bool = True
    log_components: bool = True

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("warmup_steps")
    @classmethod
    def _steps(cls, v: float) -> float:
        _check_steps(v, "warmup_steps")
        return v


class LossConfig(_Model):
    w_ctr: float = Field(1.0, ge=0.0)
    w_cvr: float = Field(1.0, ge=0.0)
    eps: float = Field(1e-6, gt=0.0)
    pos_weight_dynamic: bool = False
    static_pos_weight: TaskPair = Field(default_factory=TaskPair)
    pos_weight_clip: TaskPair = Field(default_factory=lambda: TaskPair(ctr=30.0, ctcvr=300.0))
    pos_weight_clip_schedule: PosWeightScheduleConfig = Field(
        default_factory=PosWeightScheduleConfig
    )
    aux_focal: AuxFocalConfig = Field(default_factory=AuxFocalConfig)


class EsmmConfig(_Model):
    version: Literal["v2", "legacy"] = "v2"
    eps: float = Field(1e-8, gt=0.0)
    lambda_ctr: float = Field(1.0, ge=0.0)
    lambda_ctcvr: float = Field(1.0, ge=0.0)
    lambda_cvr_aux: float = Field(1.0, ge=0.0)


# --------------------------------------------------------------------------------------- runtime


class RuntimeConfig(_Model):
    device: Literal["cuda", "cpu", "auto"] = "cuda"
    # Local devices to train on, data-parallel (train/distributed.py): a count, or auto for
    # every local GPU. On device "cpu" a count > 1 runs that many CPU processes (gloo).
    devices: CountOrAuto = 1
    epochs: int = Field(2, gt=0)
    log_every: int = Field(100, gt=0)
    # Validation interval in steps (or a fraction of the run); null uses log_every (the source
    # config's behaviour).
    valid_every: Steps | None = 0.1
    # The validation AUC that picks the best weights (higher is better). auc_primary weighs the
    # conversions' AUCs, which are noisy on a small validation split; auc_ctr rests on the clicks.
    best_metric: Literal["auc_primary", "auc_ctr", "auc_cvr", "auc_ctcvr"] = "auc_ctr"
    amp: bool = True
    amp_dtype: Literal["auto", "bf16", "fp16"] = "auto"
    grad_diag_enabled: bool = True
    grad_diag_every: int | None = Field(50, gt=0)
    grad_diag_min_tasks: int = Field(2, ge=1)
    log_health_metrics: bool = True
    max_train_steps: int | None = Field(None, gt=0)
    max_valid_steps: int | None = Field(None, gt=0)
    grad_clip_norm: float | None = Field(2.0, gt=0.0)
    seed: int = 20260127
    resume_path: str | None = None
    # "latest": resume from the newest periodic state in the catalog's training_state (a fresh
    # start when there is none); null: start fresh unless resume_path is set.
    resume: Literal["latest"] | None = None
    # On resume, continue: the original LR schedule (its span is saved with the state);
    # rederive: rebuild it from this run's epochs / total_steps (the rate may jump).
    resume_schedule: Literal["continue", "rederive"] = "continue"
    # Save a full resumable state every this many steps (or fraction of the run); 0/null: off.
    checkpoint_every: Steps | None = None
    # A NaN/inf loss component, gradient or parameter: stop (raise) or skip_batch (no update).
    on_nonfinite: Literal["stop", "skip_batch"] = "stop"
    # eager: one kernel launch per op. graph: the step with fixed shapes and no host read,
    # captured once and replayed as a CUDA graph on a GPU (eagerly on the CPU); same maths
    # (train/graph_step.py, docs/scaling.md). auto: graph on GPUs, and on the CPU in one
    # process (no sort of the sparse gradients: faster), when the settings allow it
    # (Config.static_step_blockers); eager otherwise.
    step_mode: Literal["auto", "eager", "graph"] = "auto"
    # The captured step's objective (the model above the bag pooling, and the losses) through
    # torch.compile, fused into fewer kernels (GPU only; docs/scaling.md). dense: compile it
    # (an error if that fails). auto: compile where Triton is installed, and run it as written,
    # with a warning, if compiling fails. off: as written.
    compile: Literal["auto", "dense", "off"] = "auto"
    # The embedding bags' pooling on a GPU (model/bag_sums.py): triton (one program per bag,
    # and the captured step's backward summed straight into the row optimiser's buffers), torch
    # (embedding_bag), auto: triton where it is installed. The CPU always runs torch's.
    pooling_kernel: Literal["auto", "torch", "triton"] = "auto"
    auto_eval: bool = True
    auto_eval_split: Literal["valid", "test"] = "valid"
    auto_eval_save_preds: bool = True
    auto_eval_ckpt: Literal["best", "last"] = "best"
    save_last: bool = True
    progress_bar: bool = True
    # Rows per validation forward; null: evaluation.batch_size on a GPU, 8,192 on a CPU (never
    # below data.batch_size).
    valid_batch_size: int | None = Field(None, gt=0)

    @field_validator("compile", mode="before")
    @classmethod
    def _compile(cls, v: Any) -> Any:
        # YAML reads an unquoted off / on as a boolean.
        return {False: "off", True: "dense"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("valid_every")
    @classmethod
    def _valid_every(cls, v: float | None) -> float | None:
        if v is not None:
            _check_steps(v, "valid_every")
            if v == 0:
                raise ValueError("valid_every must be > 0")
        return v

    @field_validator("checkpoint_every")
    @classmethod
    def _checkpoint_every(cls, v: float | None) -> float | None:
        if v is not None:
            _check_steps(v, "checkpoint_every")
        return v


class EvaluationConfig(_Model):
    split: Literal["train", "valid", "test"] = "test"
    batch_size: int = Field(65536, gt=0)
    device: Literal["cuda", "cpu", "auto"] = "auto"
    checkpoint: Literal["best", "last"] = "best"
    calibration_bins: int = Field(10, gt=1)
    # How saved probabilities are made calibrated on the unsampled population. platt: per-task
    # Platt scaling fitted on the validation split with the checkpoint's weights (undoes
    # negative sampling and every loss weight, CVR and CTCVR included); odds: the closed-form
    # CTR odds correction for negative sampling (and correct_pos_weight), CVR left as output.
    # Rankings, and so AUCs, are the same either way.
    calibration: Literal["platt", "odds"] = "platt"
    # odds only: divide the CTR odds by the CTR loss's pos_weight too (a weighted BCE multiplies
    # the learnt odds by it), on top of the negative-sampling correction.
    correct_pos_weight: bool = True


class ExperimentConfig(_Model):
    name: str = "deepfm_mmoe_dual_sparse"


# ---------------------------------------------------------------------------------------- root


class Config(_Model):
    # Folder of the raw files, read by the catalog (`--params raw_dir=/path/to/aliccp`).
    raw_dir: str | None = None
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    use_esmm: bool = True
    esmm: EsmmConfig = Field(default_factory=EsmmConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    vocab: VocabConfig = Field(default_factory=VocabConfig)
    synthetic: SyntheticParams = Field(default_factory=SyntheticParams)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _consistency(self) -> Config:
        if self.use_esmm and "cvr" not in self.model.tasks:
            raise _Inconsistent("model.tasks", "to contain 'cvr' when use_esmm is true")
        if self.use_esmm and "ctr" not in self.model.tasks:
            raise _Inconsistent("model.tasks", "to contain 'ctr' when use_esmm is true")
        if self.use_esmm and self.sampling.negative_sampling != "none":
            raise _Inconsistent(
                "sampling.negative_sampling", "'none' when use_esmm is true (ESMM needs all rows)"
            )
        sparse = self.optim.sparse
        uses_sparse = self.optim.type == "dual_sparse_dense" and sparse.enabled
        if uses_sparse and not self.embedding.sparse_grad and not sparse.allow_fallback_if_empty:
            raise _Inconsistent(
                "optim.sparse.allow_fallback_if_empty",
                "true when embedding.sparse_grad is false: the sparse optimiser would have no "
                "parameters (or set embedding.sparse_grad: true)",
            )
        if self.embedding.sparse_grad and not uses_sparse:
            raise _Inconsistent(
                "embedding.sparse_grad",
                "false when optim.type is 'dense' (AdamW has no sparse mode)",
            )
        names = set(self.data.fields.names())
        for name in self.embedding.value_vectors:
            if name not in names:
                raise _Inconsistent(
                    "embedding.value_vectors", f"configured field names ({sorted(names)})", name
                )
        for name in self.embedding.oov_dropout:
            if name not in names:
                raise _Inconsistent(
                    f"embedding.oov_dropout.{name}", f"a configured field name ({sorted(names)})"
                )
        for key in ("embedding.embedding_dim_overrides", "vocab.max_size", "vocab.hash_buckets"):
            section, attr = key.split(".")
            for name, val in getattr(getattr(self, section), attr).items():
                if name not in names:
                    raise _Inconsistent(
                        f"{key}.{name}", f"a configured field name ({sorted(names)})"
                    )
                if int(val) <= 0:
                    raise _Inconsistent(f"{key}.{name}", "a positive integer", val)
        bb = self.model.resolved_backbone()
        for task in bb.per_head_add:
            if task not in self.model.tasks:
                raise _Inconsistent(
                    f"model.backbone.per_head_add.{task}", f"a task in {self.model.tasks}"
                )
        self._check_backbone_users()
        rt = self.runtime
        if rt.step_mode == "graph":
            self._check_static_step()
        if rt.auto_eval and rt.auto_eval_ckpt == "last" and not rt.save_last:
            # Caught here, not after a whole training run: the 'last' weights are only kept
            # with save_last.
            raise _Inconsistent(
                "runtime.auto_eval_ckpt", "'best' (or set runtime.save_last: true)", "last"
            )
        return self

    def _check_static_step(self) -> None:
        """What the captured step (runtime.step_mode: graph) cannot do, named by its key."""
        for key, expected, got in self.static_step_blockers():
            raise _Inconsistent(key, f"{expected} with runtime.step_mode: graph", got)

    def static_step_blockers(self) -> list[tuple[str, str, Any]]:
        """(key, what the static step needs, the value) for each setting it cannot run with."""
        rt, out = self.runtime, []
        if rt.amp and rt.amp_dtype == "fp16":
            out.append(("runtime.amp_dtype", "'bf16' or 'auto'", "fp16"))
        if self.loss.pos_weight_dynamic:
            out.append(
                ("loss.pos_weight_dynamic", "false (it reads label counts every step)", True)
            )
        if self.embedding.l2_reg > 0 and not self.embedding.sparse_grad:
            out.append(("embedding.sparse_grad", "true when embedding.l2_reg > 0", False))
        return out

    def _check_backbone_users(self) -> None:
        """The parts that read the backbone's wide term, FM output or logit parts need it."""
        bb, mm = self.model.backbone, self.model.mmoe
        adds = [f for f in bb.per_head_add.values() if f.get("use_wide") or f.get("use_fm")]
        if bb.use_legacy_pseudo_deepfm and adds:
            raise _Inconsistent(
                "model.backbone.per_head_add",
                "no additions in legacy mode (use_legacy_pseudo_deepfm folds fm_vec into h)",
            )
        if adds and not bb.return_logit_parts:
            raise _Inconsistent(
                "model.backbone.return_logit_parts", "true: per_head_add adds those parts", False
            )
        if bb.fm_enabled:
            return
        users = {
            "model.backbone.use_legacy_pseudo_deepfm": bb.use_legacy_pseudo_deepfm,
            "model.mmoe.add_fm_vec": mm.add_fm_vec,
            "model.backbone.per_head_add (use_fm)": any(f.get("use_fm") for f in adds),
            **{
                f"model.heads.{t}.extra_inputs (fm_vec)": "fm_vec"
                in self.model.heads.for_task(t).extra_inputs
                for t in self.model.tasks
            },
        }
        for key, uses_fm in users.items():
            if uses_fm:
                raise _Inconsistent(key, "no use of the FM output with backbone.fm_enabled: false")

    # Derived settings ------------------------------------------------------------------------

    @property
    def valid_every(self) -> int:
        return self.runtime.valid_every or self.runtime.log_every

    @property
    def grad_diag_every(self) -> int:
        return self.runtime.grad_diag_every or self.runtime.log_every

    def embedding_dim(self, field_name: str) -> int:
        return int(
            self.embedding.embedding_dim_overrides.get(
                field_name, self.embedding.default_embedding_dim
            )
        )


class _Inconsistent(ValueError):
    def __init__(self, key: str, expected: str, got: Any = None):
        self.key = key
        tail = "" if got is None else f" (got {got!r})"
        super().__init__(f"expected {expected}{tail}")


def _from_validation(exc: ValidationError, prefix: str = "") -> ConfigError:
    lines = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"] if p != "__root__")
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _Inconsistent):
            lines.append(f"parameter '{ctx_err.key}': {ctx_err}")
            continue
        key = ".".join(p for p in (prefix, loc) if p)
        if e["type"] == "extra_forbidden":
            lines.append(f"parameter '{key}': unknown key")
        elif e["type"] == "missing":
            lines.append(f"parameter '{key}': required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            tail = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            lines.append(f"parameter '{key}': {msg}{tail}")
    return ConfigError("invalid parameters:\n  " + "\n  ".join(lines))


def load_config(parameters: dict[str, Any]) -> Config:
    """Parse Kedro's ``parameters`` dict into a :class:`Config`; raise ConfigError on any problem."""
    try:
        cfg = Config.model_validate(parameters)
    except ValidationError as exc:
        raise _from_validation(exc) from None
    for task in cfg.model.tasks:
        cfg.model.heads.for_task(task)  # validates per-task overrides
    return cfg


def load_section(key: str, values: Any) -> Any:
    """One top-level section of the parameters (``data``, ``vocab``, ``evaluation``, ...) as its
    typed model, for nodes that take ``params:<key>``. Cross-section checks are made once per
    run, on the whole parameters, by :func:`load_config`."""
    field = Config.model_fields.get(key)
    if field is None:
        raise ConfigError(f"invalid parameters:\n  parameter '{key}': unknown section")
    model = field.annotation
    try:
        return model.model_validate(values if values is not None else {})
    except ValidationError as exc:
        raise _from_validation(exc, prefix=key) from None
