"""Model: fused embedding pooling, FM, MMoE, heads, composition modes, parameter counts."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from parameter_oracle import expected_parameter_counts, widths

from rec_pipeline.config import load_config
from rec_pipeline.data.batches import Batch
from rec_pipeline.model.builder import (
    ModelMeta,
    _plan,
    build_model,
    parameter_counts,
)
from rec_pipeline.model.embedding import FusedFieldEmbedding
from rec_pipeline.model.fm import fm_interaction, pair_count, pairwise_dots
from rec_pipeline.model.mmoe import GroupedExperts
from rec_pipeline.train.losses import PosWeights, compute_losses

# ------------------------------------------------------------------------------------ batches


TinyBatch = Batch  # the loader's batch type, built by hand here


def _flatten(bags):
    ids, flds, ws, rows = [], [], [], []
    for r, row in enumerate(bags):
        for f, bag in enumerate(row):
            for i, w in bag:
                ids.append(i)
                flds.append(f)
                ws.append(w)
                rows.append(r)
    return (
        torch.tensor(ids, dtype=torch.long),
        torch.tensor(flds, dtype=torch.long),
        torch.tensor(ws, dtype=torch.float32),
        torch.tensor(rows, dtype=torch.long),
    )


def make_batch(sk_bags, cm_bags, cm_inverse, click=None, conversion=None) -> TinyBatch:
    """``sk_bags[b][f]``: list of (id, weight) of skeleton field f in row b; ``cm_bags[u][f]`` the
    same for common record u; ``cm_inverse[b]``: row b's common record."""
    n = len(sk_bags)
    sk = _flatten(sk_bags)
    cm = _flatten(cm_bags)
    click = torch.zeros(n) if click is None else torch.as_tensor(click, dtype=torch.float32)
    conversion = (
        torch.zeros(n) if conversion is None else torch.as_tensor(conversion, dtype=torch.float32)
    )
    return TinyBatch(
        *sk,
        *cm,
        torch.as_tensor(cm_inverse, dtype=torch.long),
        click,
        conversion,
        torch.arange(n),
    )


def random_bags(rng, n, vocabs, *, max_len=3, empty_prob=0.25, weighted=True):
    out = []
    for _ in range(n):
        row = []
        for v in vocabs:
            if rng.random() < empty_prob:
                row.append([])
                continue
            k = rng.randint(1, max_len)
            row.append(
                [
                    (rng.randrange(v), round(rng.uniform(0.1, 2.0), 3) if weighted else 1.0)
                    for _ in range(k)
                ]
            )
        out.append(row)
    return out


def random_batch(meta: ModelMeta, n=6, n_common=3, seed=0, empty_prob=0.25) -> TinyBatch:
    rng = random.Random(seed)
    sk_v = [meta.vocab_sizes[f] for f in meta.skeleton_fields]
    cm_v = [meta.vocab_sizes[f] for f in meta.common_fields]
    sk_bags = random_bags(rng, n, sk_v, empty_prob=empty_prob)
    cm_bags = random_bags(rng, n_common, cm_v, empty_prob=empty_prob)
    inverse = list(range(n_common)) + [rng.randrange(n_common) for _ in range(n - n_common)]
    rng.shuffle(inverse)
    click = [float(rng.random() < 0.5) for _ in range(n)]
    conv = [c * float(rng.random() < 0.5) for c in click]
    return make_batch(sk_bags, cm_bags, inverse, click, conv)


# ------------------------------------------------------------------------------------- configs

SK = ["205", "206", "210"]
CM = ["101", "109_14"]


def tiny_params(**model_overrides) -> dict:
    params = {
        "data": {"fields": {"skeleton": list(SK), "common": list(CM)}},
        "embedding": {"default_embedding_dim": 4, "mode": "mean", "sparse_grad": False},
        "optim": {"sparse": {"allow_fallback_if_empty": True}},
        "model": {
            "backbone": {
                "per_head_add": {
                    "ctr": {"use_wide": True, "use_fm": True},
                    "cvr": {"use_wide": False, "use_fm": False},
                },
                "deep_hidden_dims": [16, 8],
                "deep_dropout": 0.0,
                "fm_projection_dim": 4,
                "out_dim": 8,
            },
            "mmoe": {
                "num_experts": 3,
                "expert_mlp_dims": [8],
                "dropout": 0.0,
                "part_proj_dim": 8,
                "adapter_mlp_dims": [8],
                "gate_stabilize": {"temperature": 1.2, "noise_std": 0.05},
            },
            "heads": {"default": {"mlp_dims": [8], "dropout": 0.0}},
        },
    }
    _merge(params["model"], model_overrides)
    return params


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and v and isinstance(dst.get(k), dict):  # {} replaces
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def tiny_meta(cfg, vocab=7) -> ModelMeta:
    sk = [f"f0_{f}" for f in cfg.data.fields.skeleton]
    cm = [f"f1_{f}" for f in cfg.data.fields.common]
    vs = {name: vocab + i for i, name in enumerate(sk + cm)}
    return ModelMeta(sk, cm, vs, {"ctr": 0.2, "cvr": 0.05})


def tiny_model(params=None, seed=0):
    cfg = load_config(params or tiny_params())
    meta = tiny_meta(cfg)
    torch.manual_seed(seed)
    return cfg, meta, build_model(cfg, meta)


# ------------------------------------------------------------------------------------------- FM


def test_fm_identity_matches_pairwise_sum():
    torch.manual_seed(0)
    e = torch.randn(5, 7, 3, dtype=torch.float64)
    brute = torch.zeros(5, 3, dtype=torch.float64)
    for i in range(7):
        for j in range(i + 1, 7):
            brute += e[:, i] * e[:, j]
    torch.testing.assert_close(fm_interaction(e), brute / 7)


# ------------------------------------------------------------------------------------ embedding


def _reference_pool(emb, batch, mode, channel="none"):
    """Python loop over rows and fields: [B, F, D] vectors, [B] linear sums, [B, F] values."""
    n = batch.cm_inverse.shape[0]
    out = torch.zeros(n, emb.num_fields, emb.dim, dtype=torch.float64)
    lin = torch.zeros(n, dtype=torch.float64)
    values = torch.zeros(n, emb.num_fields, dtype=torch.float64)
    sides = [
        (emb.skeleton_table, emb.sk_row_offset, batch.sk_ids, batch.sk_fields, batch.sk_weights,
         batch.sk_rows, 0, None),
        (emb.common_table, emb.cm_row_offset, batch.cm_ids, batch.cm_fields, batch.cm_weights,
         batch.cm_rows, len(emb.skeleton_fields), batch.cm_inverse),
    ]  # fmt: skip
    for table, offs, ids, flds, ws, rows, base, inverse in sides:
        t = table.detach().double()
        for b in range(n):
            src = b if inverse is None else int(inverse[b])
            for f in range(offs.numel()):
                sel = [k for k in range(ids.numel()) if int(rows[k]) == src and int(flds[k]) == f]
                d = emb.dims[base + f]
                acc = torch.zeros(emb.dim + 1, dtype=torch.float64)
                wsum = 0.0
                for k in sel:
                    acc += float(ws[k]) * t[int(offs[f]) + int(ids[k])]
                    wsum += float(ws[k])
                if mode == "mean" and channel == "scale" and sel:
                    acc /= len(sel)  # the mean of w_i e_i over the bag's ids
                elif mode == "mean" and wsum != 0:
                    acc /= wsum
                out[b, base + f, :d] = acc[:d]
                lin[b] += acc[emb.dim]
                if channel == "dense" and sel:
                    values[b, base + f] = wsum / len(sel)
                    lin[b] += values[b, base + f] * float(emb.value_coef[base + f])
    return out, lin, values


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("dims", [(4, 4, 4, 4, 4), (4, 2, 3, 4, 1)])
def test_pooling_matches_python_loop(mode, dims):
    sk, cm = ["a", "b", "c"], ["d", "e"]
    vocab = {"a": 5, "b": 9, "c": 4, "d": 6, "e": 8}
    emb = FusedFieldEmbedding(
        sk, cm, vocab, dict(zip(sk + cm, dims, strict=True)), mode=mode, sparse=False, init_std=0.5
    )
    with torch.no_grad():  # non-zero linear column and padding rows, to exercise them
        for t in emb.tables():
            t.normal_()
    meta = ModelMeta(sk, cm, vocab)
    batch = random_batch(meta, n=7, n_common=3, seed=1, empty_prob=0.3)
    # A row whose bags are all empty: every pooled value is 0.
    out = emb(batch)
    ref, lin, _ = _reference_pool(emb, batch, mode)
    torch.testing.assert_close(out.emb_stack.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logit_linear.double(), lin, rtol=1e-5, atol=1e-6)
    concat = torch.cat([ref[:, f, :d] for f, d in enumerate(dims)], dim=1)
    torch.testing.assert_close(out.emb_concat.double(), concat, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sum_emb.double(), ref.sum(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.mean_emb.double(), ref.mean(1), rtol=1e-5, atol=1e-6)
    assert out.emb_concat.shape == (7, sum(dims))


@pytest.mark.parametrize(
    ("mode", "channel"), [("mean", "scale"), ("mean", "dense"), ("sum", "dense")]
)
def test_weight_channels_match_python_loop(mode, channel):
    sk, cm = ["a", "b", "c"], ["d", "e"]
    vocab = {"a": 5, "b": 9, "c": 4, "d": 6, "e": 8}
    dims = dict(zip(sk + cm, (4, 2, 3, 4, 1), strict=True))
    emb = FusedFieldEmbedding(
        sk, cm, vocab, dims, mode=mode, weight_channel=channel, sparse=False, init_std=0.5
    )
    with torch.no_grad():
        for t in emb.tables():
            t.normal_()
        if emb.value_coef is not None:
            emb.value_coef.normal_()
    batch = random_batch(ModelMeta(sk, cm, vocab), n=7, n_common=3, seed=2, empty_prob=0.3)
    out = emb(batch)
    ref, lin, values = _reference_pool(emb, batch, mode, channel)
    torch.testing.assert_close(out.emb_stack.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logit_linear.double(), lin, rtol=1e-5, atol=1e-6)
    if channel == "dense":
        torch.testing.assert_close(out.values.double(), values, rtol=1e-5, atol=1e-6)
        assert out.dense_input.shape == (7, emb.concat_dim + emb.num_fields)
    else:
        assert out.values is None and out.dense_input is out.emb_concat


@pytest.mark.parametrize(
    ("mode", "channel"), [("mean", "dense"), ("mean", "none"), ("sum", "none")]
)
def test_value_vectors_are_the_mean_of_w_e_over_each_bag(mode, channel):
    """``embedding.value_vectors``: for the listed fields, the mean of w_i e_i over the bag's
    ids (against the Python loop), beside the unchanged pooling; in dense_input, last."""
    sk, cm = ["a", "b", "c"], ["d", "e"]
    vocab = {"a": 5, "b": 9, "c": 4, "d": 6, "e": 8}
    dims = dict(zip(sk + cm, (4, 2, 3, 4, 1), strict=True))
    kw = {"mode": mode, "weight_channel": channel, "sparse": False, "init_std": 0.5}
    emb = FusedFieldEmbedding(sk, cm, vocab, dims, value_vectors=["d", "b"], **kw)
    with torch.no_grad():
        for t in emb.tables():
            t.normal_()
    batch = random_batch(ModelMeta(sk, cm, vocab), n=7, n_common=3, seed=3, empty_prob=0.3)
    out = emb(batch)
    ref, lin, _ = _reference_pool(emb, batch, mode, channel)
    torch.testing.assert_close(out.emb_stack.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logit_linear.double(), lin, rtol=1e-5, atol=1e-6)
    scaled, _, _ = _reference_pool(emb, batch, "mean", "scale")  # [B, F, D], masked to d_f
    want = scaled[:, [3, 1]].flatten(1)  # d, then b: the listed order
    torch.testing.assert_close(out.value_vectors.double(), want, rtol=1e-5, atol=1e-6)
    width = emb.concat_dim + (emb.num_fields if channel == "dense" else 0) + 2 * emb.dim
    assert out.dense_input.shape == (7, width)
    torch.testing.assert_close(out.dense_input[:, -2 * emb.dim :], out.value_vectors)
    with pytest.raises(ValueError, match="value_vectors names fields .*'z'"):
        FusedFieldEmbedding(sk, cm, vocab, dims, value_vectors=["z"])


def test_weight_channel_keeps_a_one_id_bags_intensity():
    """A plain weighted mean maps w*e/w to e whatever w is; both channels keep w."""
    pooled = {}
    for channel in ("none", "scale", "dense"):
        torch.manual_seed(0)
        emb = FusedFieldEmbedding(["x"], [], {"x": 3}, {"x": 2}, weight_channel=channel)
        batch = make_batch([[[(1, 0.5)]], [[(1, 2.0)]]], [], [0, 0])
        pooled[channel] = emb(batch)
    plain = pooled["none"].emb_stack
    torch.testing.assert_close(plain[0], plain[1])  # the intensity is lost
    scaled = pooled["scale"].emb_stack
    torch.testing.assert_close(scaled[1], 4.0 * scaled[0])
    torch.testing.assert_close(pooled["dense"].values[:, 0], torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match="needs mode 'mean'"):
        FusedFieldEmbedding(["x"], [], {"x": 3}, {"x": 2}, mode="sum", weight_channel="scale")


def test_empty_bags_pool_to_zero_and_zero_weight_mean():
    emb = FusedFieldEmbedding(["a"], ["b"], {"a": 4, "b": 4}, {"a": 3, "b": 3}, mode="mean")
    with torch.no_grad():
        for t in emb.tables():
            t.normal_()
    # row 0: field a empty; row 1: field a with weights summing to 0 (ln 1 = 0 weights)
    batch = make_batch([[[]], [[(1, 0.0), (2, 0.0)]]], [[[(3, 1.0)]]], [0, 0])
    out = emb(batch)
    assert torch.all(out.emb_stack[:, 0] == 0)
    assert torch.isfinite(out.emb_stack).all()
    torch.testing.assert_close(out.emb_stack[0, 1], emb.common_table[3, :3].detach())


def test_masked_columns_get_no_gradient_and_init():
    emb = FusedFieldEmbedding(["a", "b"], [], {"a": 5, "b": 6}, {"a": 4, "b": 2}, sparse=False)
    t = emb.skeleton_table
    # init: padding rows, linear column, unused columns of b are zero
    assert torch.all(t[0] == 0) and torch.all(t[5] == 0)
    assert torch.all(t[:, 4] == 0)
    assert torch.all(t[5:, 2:4] == 0)
    assert t[1:5, :4].abs().sum() > 0
    with torch.no_grad():
        t.normal_()
    batch = make_batch([[[(1, 1.0)], [(2, 1.0), (3, 0.5)]]], [[]], [0])
    out = emb(batch)
    (out.emb_stack.sum() + out.logit_linear.sum()).backward()
    g = t.grad
    assert torch.all(g[5:, 2:4] == 0)  # field b's unused columns
    assert g[5 + 2, :2].abs().sum() > 0 and g[5 + 2, 4] != 0
    assert torch.all(out.emb_stack[:, 1, 2:] == 0)


@pytest.mark.parametrize("sparse", [True, False])
def test_embedding_gradients_sparse_when_configured(sparse):
    params = tiny_params()
    params["embedding"]["sparse_grad"] = sparse
    cfg, meta, model = tiny_model(params)
    model(random_batch(meta)).logits["ctr"].sum().backward()
    tables = model.embedding.tables()
    assert len(tables) == 2
    for t in tables:
        assert t.grad is not None and t.grad.is_sparse == sparse
    sparse_ids = {id(p) for p in model.sparse_parameters()}
    dense_ids = {id(p) for p in model.dense_parameters()}
    assert sparse_ids == ({id(t) for t in tables} if sparse else set())
    assert not (sparse_ids & dense_ids)
    assert len(sparse_ids | dense_ids) == len(list(model.parameters()))


def test_common_side_pooled_once_per_record():
    """Rows sharing a common record get identical common embeddings."""
    cfg, meta, model = tiny_model()
    batch = random_batch(meta, n=8, n_common=2, seed=3, empty_prob=0.0)
    out = model.embedding(batch)
    fs = len(meta.skeleton_fields)
    inv = batch.cm_inverse.tolist()
    for a in range(8):
        for b in range(8):
            if inv[a] == inv[b]:
                torch.testing.assert_close(out.emb_stack[a, fs:], out.emb_stack[b, fs:])


# ------------------------------------------------------------------------------------------ MMoE


def test_grouped_experts_equal_separate_mlps():
    torch.manual_seed(0)
    ex = GroupedExperts(5, 3, [4, 6], activation="relu", dropout=0.0)
    x = torch.randn(7, 5)
    got = ex(x)
    assert got.shape == (7, 3, 6)
    for e in range(3):
        h = x
        for w, b in zip(ex.weights, ex.biases, strict=True):
            h = torch.relu(h @ w[e] + b[e])
        torch.testing.assert_close(got[:, e], h)


def test_mixture_and_gate_shapes():
    cfg, meta, model = tiny_model()
    model.eval()
    x = torch.randn(5, model.composer.out_dim)
    mixed, gates = model.mmoe(x)
    experts = model.mmoe.experts(model.mmoe.norm(x))
    for t in ("ctr", "cvr"):
        assert gates[t].shape == (5, 3) and gates[t].dtype == torch.float32
        torch.testing.assert_close(gates[t].sum(-1), torch.ones(5))
        torch.testing.assert_close(mixed[t], (gates[t].unsqueeze(-1) * experts).sum(1))


def _no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def test_gate_noise_only_in_training_mode():
    cfg, meta, model = tiny_model()
    _no_dropout(model)  # so that the gate noise is the only randomness in training mode
    batch = random_batch(meta)
    model.eval()
    a, b = model(batch), model(batch)
    torch.testing.assert_close(a.gates["ctr"], b.gates["ctr"], rtol=0, atol=0)
    model.train()
    c, d = model(batch), model(batch)
    assert not torch.equal(c.gates["ctr"], d.gates["ctr"])
    assert c.training and not a.training
    params = tiny_params(mmoe={"gate_stabilize": {"noise_std": 0.0}})
    cfg, meta, model = tiny_model(params)
    _no_dropout(model).train()
    torch.testing.assert_close(model(batch).gates["cvr"], model(batch).gates["cvr"])


def test_gate_temperature_applied():
    cfg, meta, model = tiny_model()
    model.eval()
    x = model.mmoe.norm(torch.randn(4, model.composer.out_dim))
    logits = model.mmoe.gates["ctr"](x)
    torch.testing.assert_close(
        model.mmoe.gate_weights(x)["ctr"], torch.softmax(logits / 1.2, dim=-1)
    )


# ----------------------------------------------------------------------------------------- heads


def test_head_bias_is_prior_log_odds():
    params = tiny_params(heads={"cvr": {"prior_rate": 0.003}})
    cfg, meta, model = tiny_model(params)
    ctr_bias = model.heads["ctr"].mlp.output_linear.bias.item()
    cvr_bias = model.heads["cvr"].mlp.output_linear.bias.item()
    assert ctr_bias == pytest.approx(math.log(0.2 / 0.8), rel=1e-6)  # from meta
    assert cvr_bias == pytest.approx(math.log(0.003 / 0.997), rel=1e-6)  # head override


def test_missing_prior_is_an_error():
    cfg = load_config(tiny_params())
    meta = tiny_meta(cfg)
    meta.prior_rates = {"ctr": 0.1}
    with pytest.raises(ValueError, match="prior rate"):
        build_model(cfg, meta)


# ------------------------------------------------------------------------------ composition


def test_per_head_add_wide_reaches_ctr_only():
    cfg, meta, model = tiny_model()
    model.eval()
    batch = random_batch(meta, empty_prob=0.0)
    before = model(batch)
    with torch.no_grad():
        model.embedding.skeleton_table[:, -1] += 0.5  # the first-order column only
    after = model(batch)
    assert not torch.allclose(before.logits["ctr"], after.logits["ctr"])
    torch.testing.assert_close(before.logits["cvr"], after.logits["cvr"])
    torch.testing.assert_close(
        after.logits["ctr"] - before.logits["ctr"],
        after.logit_linear - before.logit_linear,
    )
    assert after.fm_logit is not None and after.fm_logit.shape == (6,)


@pytest.mark.parametrize("per_task", [False, True])
def test_wide_per_task_gives_each_task_its_own_first_order_weights(per_task):
    params = tiny_params(
        backbone={
            "per_head_add": {
                "ctr": {"use_wide": True, "use_fm": False},
                "cvr": {"use_wide": True, "use_fm": False},
            },
            "wide_per_task": per_task,
        }
    )
    cfg, meta, model = tiny_model(params)
    model.eval()
    emb = model.embedding
    assert emb.linear_terms == (2 if per_task else 1)
    assert parameter_counts(model) == expected_parameter_counts(cfg, meta)
    batch = random_batch(meta, empty_prob=0.0)
    before = model(batch)
    with torch.no_grad():  # shift the last first-order column of every row
        for t in emb.tables():
            t[:, -1] += 0.5
    after = model(batch)
    shift = {k: after.logits[k] - before.logits[k] for k in ("ctr", "cvr")}
    n_fields = emb.num_fields  # every field's bag is non-empty: each adds 0.5 (mean pooling)
    torch.testing.assert_close(shift["cvr"], torch.full((6,), 0.5 * n_fields))
    if per_task:  # the last column is CVR's own: CTR's logits do not move
        torch.testing.assert_close(shift["ctr"], torch.zeros(6))
    else:  # one shared column moves both
        torch.testing.assert_close(shift["ctr"], shift["cvr"])


def test_per_head_add_fm_logit_added_to_ctr():
    cfg, meta, model = tiny_model()
    model.eval()
    batch = random_batch(meta, empty_prob=0.0)
    base = model(batch)
    with torch.no_grad():
        model.fm.proj.output_linear.bias += 1.0
    shifted = model(batch)
    torch.testing.assert_close(shifted.logits["ctr"], base.logits["ctr"] + 1.0)
    torch.testing.assert_close(shifted.logits["cvr"], base.logits["cvr"])


def test_legacy_mode_projects_deep_and_fm():
    params = tiny_params(backbone={"use_legacy_pseudo_deepfm": True, "per_head_add": {}})
    cfg, meta, model = tiny_model(params)
    assert model.legacy_proj is not None
    assert model.legacy_proj.in_features == 8 + 4  # deep_h (8) + fm_vec (D = 4)
    assert model.legacy_proj.out_features == 8
    assert model.fm is not None and model.fm.proj is None  # no fm_logit in legacy mode
    model.eval()
    batch = random_batch(meta, empty_prob=0.0)
    before = model(batch)
    with torch.no_grad():
        model.embedding.skeleton_table[:, -1] += 0.5
    after = model(batch)
    for t in ("ctr", "cvr"):  # the linear term is added to no head
        torch.testing.assert_close(before.logits[t], after.logits[t])
    (after.logits["ctr"].sum()).backward()
    assert model.legacy_proj.weight.grad.abs().sum() > 0


def test_build_errors_are_clear():
    with pytest.raises(ValueError, match="add_fm_vec"):
        tiny_model(tiny_params(backbone={"fm_enabled": False, "per_head_add": {}}))
    with pytest.raises(ValueError, match="use_fm"):
        tiny_model(
            tiny_params(
                backbone={"fm_enabled": False, "per_head_add": {"ctr": {"use_fm": True}}},
                mmoe={"add_fm_vec": False},
            )
        )
    with pytest.raises(ValueError, match="fusion 'sum'"):
        tiny_model(tiny_params(mmoe={"part_proj_dim": None, "fusion": "sum"}))
    with pytest.raises(ValueError, match="return_logit_parts"):
        tiny_model(tiny_params(backbone={"return_logit_parts": False}))


def test_fm_disabled_model_runs():
    params = tiny_params(
        backbone={
            "fm_enabled": False,
            "per_head_add": {"ctr": {"use_wide": True, "use_fm": False}},
        },
        mmoe={"add_fm_vec": False},
    )
    cfg, meta, model = tiny_model(params)
    assert model.fm is None
    out = model(random_batch(meta))
    assert out.fm_logit is None and out.logits["ctr"].shape == (6,)


def test_parameter_groups():
    cfg, meta, model = tiny_model()
    shared = {id(p) for p in model.shared_parameters()}
    for t in ("ctr", "cvr"):
        own = {id(p) for p in model.task_parameters(t)}
        assert own and not (own & shared)
    assert {id(p) for p in model.mmoe.experts.parameters()} <= shared
    assert {id(p) for p in model.deep.parameters()} <= shared
    assert not (
        {id(p) for p in model.task_parameters("ctr")}
        & {id(p) for p in model.task_parameters("cvr")}
    )


# ----------------------------------------------------------------------------- parameter counts

SEED_MODEL = {
    "name": "deepfm_mmoe",
    "mtl": "mmoe",
    "enabled_heads": ["ctr", "cvr"],
    "tasks": ["ctr", "cvr"],
    "backbone": {
        "use_legacy_pseudo_deepfm": False,
        "return_logit_parts": True,
        "per_head_add": {
            "ctr": {"use_wide": True, "use_fm": True},
            "cvr": {"use_wide": False, "use_fm": False},
        },
        "deep_hidden_dims": [128, 64],
        "deep_dropout": 0.2,
        "deep_activation": "relu",
        "deep_use_bn": False,
        "fm_enabled": True,
        "fm_projection_dim": 16,
        "out_dim": 64,
    },
    "mmoe": {
        "num_experts": 4,
        "expert_mlp_dims": [128],
        "gate_type": "linear",
        "gate_hidden_dims": [],
        "input": "deep_h",
        "dropout": 0.2,
        "log_gates": True,
        "gate_stabilize": {
            "enabled": True,
            "temperature": 1.2,
            "noise_std": 0.05,
            "eps": 1.0e-8,
            "entropy_reg_weight": 1.0e-3,
            "load_balance_kl_weight": 1.0e-3,
            "log_stats": True,
        },
        "add_fm_vec": True,
        "add_emb": "mean",
        "part_proj_dim": 128,
        "fusion": "concat",
        "adapter_mlp_dims": [128],
        "norm": "layernorm",
    },
    "heads": {
        "default": {"mlp_dims": [128], "dropout": 0.1, "use_bn": False, "activation": "relu"},
        "ctr": {},
        "cvr": {},
    },
    "deep_hidden_dims": [256, 128],
    "deep_dropout": 0.2,
    "deep_activation": "relu",
    "deep_use_bn": False,
    "fm_enabled": True,
    "fm_projection_dim": 16,
    "out_dim": 128,
}


def _seed_params(model=None, embedding=None) -> dict:
    model = copy.deepcopy(model or SEED_MODEL)
    # The recipe predates these keys; the source's behaviour, not the product default.
    model["backbone"].setdefault("wide_per_task", False)
    model["heads"]["default"].setdefault("extra_inputs", [])
    model["heads"]["cvr"].setdefault("dropout", 0.1)
    embedding = {"default_embedding_dim": 8, "mode": "mean", "sparse_grad": True} | (
        embedding or {}
    )
    return {"embedding": {"weight_channel": "none", "l2_reg": 0.0} | embedding, "model": model}


def _meta_for(cfg, vocab=50) -> ModelMeta:
    names = cfg.data.fields.names()
    ns = len(cfg.data.fields.skeleton)
    return ModelMeta(names[:ns], names[ns:], {n: vocab for n in names}, {"ctr": 0.07, "cvr": 0.01})


def test_seed_parameter_counts_match_formula_and_hand_count():
    cfg = load_config(_seed_params())
    meta = _meta_for(cfg)
    model = build_model(cfg, meta)
    got = parameter_counts(model)
    assert got == expected_parameter_counts(cfg, meta)
    # Hand count, 23 Ali-CCP fields x dim 8 -> emb_concat 184, D = 8, out_dim 64:
    hand = {
        "embedding": 23 * 50 * 9,  # 23 fields x 50 rows x (8 + 1 linear column)
        "deep": (184 * 128 + 128) + (128 * 64 + 64),  # 31,936
        "fm": (8 * 16 + 16) + (16 + 1),  # 161
        "legacy_proj": 0,
        "composer_parts": (64 * 128 + 128) + 2 * (8 * 128 + 128) + 3 * 2 * 128,  # 11,392
        "adapter": (384 * 128 + 128) + (128 * 64 + 64),  # 57,536
        "mmoe_norm": 2 * 64,
        "experts": 4 * (64 * 128 + 128),  # 33,280
        "gates": 2 * (64 * 4 + 4),  # 520
        "head_ctr": (128 * 128 + 128) + (128 + 1),  # 16,641 (the seed writes 16,513)
        "head_cvr": (128 * 128 + 128) + (128 + 1),
    }
    for k, v in hand.items():
        assert got[k] == v, k
    assert got["dense_total"] == 168_235
    assert got["total"] == 168_235 + 10_350


def _variant(**changes) -> dict:
    model = copy.deepcopy(SEED_MODEL)
    _merge(model, changes)
    return model


VARIANTS = {
    "legacy_flat": (
        _variant(
            backbone={
                "use_legacy_pseudo_deepfm": True,
                "per_head_add": {},
                "deep_hidden_dims": [256, 128],
                "out_dim": 128,
            }
        ),
        None,
    ),
    "per_field_dims": (_variant(), {"embedding_dim_overrides": {"f0_205": 16, "f1_101": 12}}),
    "add_emb_concat": (_variant(mmoe={"add_emb": "concat"}), None),
    "fusion_sum": (_variant(mmoe={"fusion": "sum"}), None),
    "no_proj_concat": (_variant(mmoe={"part_proj_dim": None, "norm": "none"}), None),
    "mlp_gate": (_variant(mmoe={"gate_type": "mlp", "gate_hidden_dims": [32, 16]}), None),
    "bn_prelu": (
        _variant(
            backbone={"deep_use_bn": True, "deep_activation": "prelu"},
            heads={"cvr": {"use_bn": True, "mlp_dims": [64, 32]}},
        ),
        None,
    ),
    "fm_sum_logit": (_variant(backbone={"fm_projection_dim": None}), None),
    "dense_values_heads_skip": (
        _variant(
            mmoe={"add_emb": "concat"},
            heads={"default": {"extra_inputs": ["emb", "deep_h"]}, "ctr": {"extra_inputs": []}},
        ),
        {"weight_channel": "dense"},
    ),
    "field_dots_to_cvr": (
        _variant(heads={"cvr": {"extra_inputs": ["emb", "dots"]}}),
        {"embedding_dim_overrides": {"f0_205": 4}},
    ),
    "deep_experts_no_adapter": (
        _variant(mmoe={"expert_mlp_dims": [96, 48], "adapter_mlp_dims": [], "add_emb": "sum"}),
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_parameter_counts_match_formula(name):
    model_sec, emb = VARIANTS[name]
    cfg = load_config(_seed_params(model_sec, emb))
    meta = _meta_for(cfg, vocab=11)
    model = build_model(cfg, meta)
    assert parameter_counts(model) == expected_parameter_counts(cfg, meta)
    if name == "legacy_flat":
        assert parameter_counts(model)["legacy_proj"] == 136 * 128 + 128 == 17_536
    if name == "per_field_dims":
        assert model.embedding.dim == 16 and model.embedding.concat_dim == 21 * 8 + 16 + 12
    if name == "dense_values_heads_skip":
        # 23 fields x (8 dims + 1 value) feed the deep MLP and the emb part; the CVR head reads
        # its expert mixture (128) + emb (207) + deep_h (64); CTR's own override has no skip.
        assert model.deep.in_dim == 23 * 9 == 207
        assert model.heads["cvr"].mlp.in_dim == 128 + 207 + 64
        assert model.heads["ctr"].mlp.in_dim == 128
    batch = random_batch(meta, n=4, n_common=2)
    model.train()
    out = model(batch)
    assert out.logits["ctr"].shape == (4,) and out.gates["cvr"].shape == (4, 4)


# ------------------------------------------------------------------------------------- autocast


def test_autocast_bf16_forward_backward_gives_fp32_losses():
    params = tiny_params()
    params["loss"] = {"aux_focal": {"enabled": True, "warmup_steps": 0}}
    params["model"]["mmoe"]["gate_stabilize"]["entropy_reg_weight"] = 0.01
    cfg, meta, model = tiny_model(params)
    model.train()
    batch = random_batch(meta, n=8, n_common=3)
    pw = PosWeights(cfg).current(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
        res = compute_losses(out, batch.click, batch.conversion, step=10, cfg=cfg, pos_weight=pw)
    assert all(v.dtype == torch.float32 for v in out.logits.values())
    assert res.total.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in res.components.values())
    assert torch.isfinite(res.total)
    res.total.backward()
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad.to_dense()).all()
    assert model.mmoe.experts.weights[0].grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_forward_and_losses_on_cuda_match_the_cpu():
    torch.manual_seed(0)
    cfg = load_config(_seed_params())
    meta = _meta_for(cfg)
    model = build_model(cfg, meta).eval()
    batch = random_batch(meta, n=64, n_common=9, seed=5)
    out_cpu = model(batch)
    out_gpu = model.to("cuda")(batch.to("cuda"))
    for task in out_cpu.logits:
        ref = out_cpu.logits[task].double()
        got = out_gpu.logits[task].double().cpu()
        assert ((got - ref).norm() / ref.norm()) < 1e-3, task
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(batch.to("cuda"))
    res = compute_losses(
        out,
        batch.click.cuda(),
        batch.conversion.cuda(),
        step=0,
        cfg=cfg,
        pos_weight={"ctr": 2.0, "ctcvr": 30.0},
    )
    assert res.total.dtype == torch.float32 and torch.isfinite(res.total)


def test_seed_plan_widths_by_hand():
    # 23 Ali-CCP fields x dim 8; deep 184 -> 128 -> 64; composer parts deep_h, fm_vec, mean emb;
    # each head reads its 128-wide mixture only.
    cfg = load_config(_seed_params())
    plan = _plan(cfg, _meta_for(cfg))
    assert (plan.emb_dim, plan.concat_dim, plan.dense_dim, plan.deep_out) == (8, 184, 184, 64)
    assert plan.linear_terms == 1 and not plan.legacy
    assert plan.part_dims == {"deep_h": 64, "fm_vec": 8, "emb": 8}
    assert plan.head_in_dims == {"ctr": 128, "cvr": 128}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_plan_matches_widths_read_from_the_config(name):
    model_sec, emb = VARIANTS[name]
    cfg = load_config(_seed_params(model_sec, emb))
    meta = _meta_for(cfg, vocab=11)
    plan, want = _plan(cfg, meta), widths(cfg, meta)
    assert (plan.emb_dim, plan.dense_dim, plan.deep_out, plan.linear_terms) == (
        want.emb_dim,
        want.dense_dim,
        want.deep_out,
        want.linear_terms,
    )
    assert list(plan.part_dims.values()) == want.part_dims
    assert plan.head_in_dims == want.head_in


def test_pairwise_dots_match_a_loop_over_field_pairs():
    torch.manual_seed(3)
    e = torch.randn(4, 5, 3, dtype=torch.float64)
    want = torch.stack(
        [
            torch.stack([e[b, i] @ e[b, j] for i in range(5) for j in range(i + 1, 5)])
            for b in range(4)
        ]
    )
    torch.testing.assert_close(pairwise_dots(e), want)
    assert pair_count(5) == 10 == pairwise_dots(e).shape[1]


def test_pooling_into_gradient_sinks_gives_the_tables_gradients():
    """``pool(batch, sinks)``: the tables get no ``.grad`` and the sinks hold what it would be."""
    torch.manual_seed(0)
    cfg = load_config(_seed_params())
    meta = _meta_for(cfg)
    emb = build_model(cfg, meta).embedding.double()
    batch = random_batch(meta, n=12, n_common=4, seed=3)
    stacked = emb.pool(batch)
    g = torch.randn_like(stacked)
    (stacked * g).sum().backward()
    expected = [t.grad.to_dense() for t in emb.tables()]
    emb.zero_grad(set_to_none=True)
    sinks = [torch.zeros_like(t) for t in emb.tables()]
    flags = [torch.zeros(t.shape[0] + 1, dtype=torch.float64) for t in emb.tables()]
    plans = emb.plan(batch, flags)
    (emb.pool(batch, sinks, plans) * g).sum().backward()
    assert all(t.grad is None for t in emb.tables())
    for sink, ref in zip(sinks, expected, strict=True):
        torch.testing.assert_close(sink, ref, rtol=1e-12, atol=1e-12)
    # The plan flagged exactly the rows of the real lookups, which it shares with lookups().
    for flag, (rows, mask), (shared, _) in zip(
        flags, emb.lookups(batch), emb.lookups(batch, plans), strict=True
    ):
        assert torch.equal(shared, rows)
        want = torch.zeros_like(flag)
        want[rows[mask > 0]] = 1.0
        assert torch.equal(flag[:-1], want[:-1])
