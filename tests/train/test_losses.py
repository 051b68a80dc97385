"""Objective: log-space CTCVR, aux focal, CVR auxiliary loss, gate regulariser, pos weights."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rec_pipeline.config import load_config
from rec_pipeline.model.mmoe import MMoE
from rec_pipeline.train.losses import (
    ESMM_COMPONENTS,
    PosWeights,
    compute_losses,
    gate_regularisers,
    log1mexp,
)

# The plain objective (no clip schedule, no focal term, no gate regularisers, the source's CVR
# auxiliary weight): each test switches on what it checks.
PLAIN_LOSS = {
    "pos_weight_clip": {"ctr": 1e9, "ctcvr": 1e9},
    "pos_weight_clip_schedule": {"enabled": False},
    "aux_focal": {"enabled": False},
}
PLAIN_GATE = {"temperature": 1.0, "noise_std": 0.0, "entropy_reg_weight": 0.0}
PLAIN_GATE["load_balance_kl_weight"] = 0.0


def make_cfg(loss=None, esmm=None, gate=None, **top):
    params = {
        "loss": PLAIN_LOSS | (loss or {}),
        "esmm": {"lambda_cvr_aux": 0.1} | (esmm or {}),
        "model": {"mmoe": {"gate_stabilize": PLAIN_GATE | (gate or {})}},
        "optim": {"sparse": {"allow_fallback_if_empty": True}},
        "embedding": {"sparse_grad": False},
    }
    params.update(top)
    return load_config(params)


def make_out(l_ctr, l_cvr, gates=None, training=False, embedding_l2=None):
    return SimpleNamespace(
        logits={"ctr": l_ctr, "cvr": l_cvr},
        gates=gates or {},
        training=training,
        logit_linear=None,
        fm_logit=None,
        embedding_l2=embedding_l2,
    )


# ----------------------------------------------------------------------------------- log1mexp


def test_log1mexp_matches_float64_reference():
    x64 = -torch.logspace(-12, math.log10(50.0), 2000, dtype=torch.float64)
    # Independent float64 reference through power series:
    # x in [-1, 0): log(1 - e^x) = log(-x) + log(sum_k x^k / (k+1)!)  ((e^x - 1)/x series)
    # x < -1:       log(1 - e^x) = -sum_k e^(kx) / k
    near = x64 >= -1.0
    xs = torch.where(near, x64, torch.full_like(x64, -0.5))
    series = sum(xs**k / float(math.factorial(k + 1)) for k in range(25))
    ref_near = torch.log(-xs) + torch.log(series)
    xf = torch.where(near, torch.full_like(x64, -2.0), x64)
    ref_far = -sum(torch.exp(k * xf) / k for k in range(1, 80))
    ref = torch.where(near, ref_near, ref_far)
    torch.testing.assert_close(log1mexp(x64), ref, rtol=1e-12, atol=0)
    got32 = log1mexp(x64.float()).double()
    torch.testing.assert_close(got32, ref, rtol=1e-5, atol=1e-6)


def test_log1mexp_zero_and_gradients_finite():
    x = torch.tensor([0.0, -1e-30, -1e-8, -0.5, -math.log(2), -1.0, -30.0, -100.0, -1e4])
    x.requires_grad_(True)
    y = log1mexp(x)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    y = y.detach()
    # the naive formula is wrong where log1mexp is not
    assert float(y[6]) == pytest.approx(-math.exp(-30.0), rel=1e-5)
    assert float(y[2]) == pytest.approx(math.log(1e-8), rel=1e-5)


# ------------------------------------------------------------------------------- ESMM reference


def _softplus(z):
    return np.logaddexp(0.0, z)


def _reference_esmm(a, b, click, conv, pw_ctr, pw_ctcvr, gamma=None, alpha=None):
    """Float64 reference through the closed forms
    log p = -softplus(-a) - softplus(-b),
    log(1 - p) = log(e^-a + e^-b + e^-(a+b)) - softplus(-a) - softplus(-b)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    l_ctr = np.mean(pw_ctr * click * _softplus(-a) + (1 - click) * _softplus(a))
    log_p = -_softplus(-a) - _softplus(-b)
    log_1mp = np.logaddexp(np.logaddexp(-a, -b), -a - b) + log_p
    elem = -pw_ctcvr * conv * log_p - (1 - conv) * log_1mp
    bce = elem.mean()
    focal = None
    if gamma is not None:
        p = np.exp(log_p)
        one_minus_pt = np.where(conv > 0, np.exp(log_1mp), p)
        w = one_minus_pt**gamma
        if alpha is not None:
            w = w * np.where(conv > 0, alpha, 1 - alpha)
        focal = (w * elem).mean()
    aux_elem = _softplus(-b) * conv + _softplus(b) * (1 - conv)
    aux = (aux_elem * click).sum() / max(click.sum(), 1)
    return l_ctr, bce, focal, aux


def _extreme_batch():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.normal(0, 3, 40), [50, 50, -50, -50, 50, -50, 30, -30]])
    b = np.concatenate([rng.normal(-2, 3, 40), [50, -50, 50, -50, 50, 50, 30, -30]])
    click = np.concatenate([(rng.random(40) < 0.5), [0, 1, 1, 0, 1, 0, 1, 1]]).astype(float)
    conv = click * np.concatenate([(rng.random(40) < 0.4), [0, 1, 0, 0, 0, 0, 1, 1]])
    return a, b, click, conv


@pytest.mark.parametrize("focal", [False, True])
def test_esmm_losses_match_float64_reference_with_extreme_logits(focal):
    a, b, click, conv = _extreme_batch()
    pw = {"ctr": 3.0, "ctcvr": 40.0}
    loss = {
        "aux_focal": {
            "enabled": focal,
            "warmup_steps": 5,
            "lambda": 0.3,
            "gamma": 2.0,
            "use_alpha": True,
            "alpha": 0.3,
        }
    }
    cfg = make_cfg(loss=loss, esmm={"lambda_ctr": 0.7, "lambda_ctcvr": 1.3, "lambda_cvr_aux": 0.2})
    la = torch.tensor(a, dtype=torch.float32, requires_grad=True)
    lb = torch.tensor(b, dtype=torch.float32, requires_grad=True)
    res = compute_losses(
        make_out(la, lb),
        torch.tensor(click, dtype=torch.float32),
        torch.tensor(conv, dtype=torch.float32),
        step=10,
        cfg=cfg,
        pos_weight=pw,
    )
    l_ctr, bce, foc, aux = _reference_esmm(
        a, b, click, conv, 3.0, 40.0, gamma=2.0 if focal else None, alpha=0.3
    )
    c = {k: float(v.detach()) for k, v in res.components.items()}
    assert set(ESMM_COMPONENTS) <= set(c)
    assert c["loss_ctr"] == pytest.approx(l_ctr, rel=1e-5)
    assert c["loss_ctcvr_bce"] == pytest.approx(bce, rel=1e-5)
    assert c["loss_cvr_aux"] == pytest.approx(aux, rel=1e-5)
    foc = foc if focal else 0.0
    assert c["loss_ctcvr_focal"] == pytest.approx(foc, rel=1e-4, abs=1e-12)
    assert c["loss_ctcvr"] == pytest.approx(bce + 0.3 * foc, rel=1e-5)
    total = 0.7 * l_ctr + 1.3 * (bce + 0.3 * foc) + 0.2 * aux
    assert float(res.total.detach()) == pytest.approx(total, rel=1e-5)
    res.total.backward()
    assert torch.isfinite(la.grad).all() and torch.isfinite(lb.grad).all()


def test_ctcvr_gradient_matches_float64_autograd():
    a, b, click, conv = _extreme_batch()
    cfg = make_cfg(esmm={"lambda_ctr": 0.0, "lambda_cvr_aux": 0.0})
    grads = []
    for dtype in (torch.float32, torch.float64):
        la = torch.tensor(a, dtype=dtype, requires_grad=True)
        lb = torch.tensor(b, dtype=dtype, requires_grad=True)
        y = torch.tensor(conv, dtype=dtype)
        if dtype == torch.float32:
            res = compute_losses(
                make_out(la, lb), torch.tensor(click), y, step=0, cfg=cfg, pos_weight={}
            )
            res.total.backward()
        else:  # independent float64 formula: log(1-p) through the three-term logsumexp
            log_p = -torch.nn.functional.softplus(-la) - torch.nn.functional.softplus(-lb)
            terms = torch.stack([-la, -lb, -la - lb])
            log_1mp = torch.logsumexp(terms, dim=0) + log_p
            (-(y * log_p) - (1 - y) * log_1mp).mean().backward()
        grads.append((la.grad.double(), lb.grad.double()))
    for g32, g64 in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(g32, g64, rtol=1e-4, atol=1e-7)


def test_legacy_esmm_version_probability_space():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 30), rng.normal(-1, 1, 30)
    click = (rng.random(30) < 0.5).astype(float)
    conv = click * (rng.random(30) < 0.5)
    cfg = make_cfg(esmm={"version": "legacy", "eps": 1e-7})
    res = compute_losses(
        make_out(torch.tensor(a).float(), torch.tensor(b).float()),
        torch.tensor(click).float(),
        torch.tensor(conv).float(),
        step=0,
        cfg=cfg,
        pos_weight={"ctr": 1.0, "ctcvr": 2.0},
    )
    p = np.clip(1 / (1 + np.exp(-a)) / (1 + np.exp(-b)), 1e-7, 1 - 1e-7)
    ref = np.mean(-2.0 * conv * np.log(p) - (1 - conv) * np.log(1 - p))
    assert float(res.components["loss_ctcvr_bce"].detach()) == pytest.approx(ref, rel=1e-5)


# ----------------------------------------------------------------------------------- aux focal


def _focal_setup(detach=True, warmup=100):
    cfg = make_cfg(
        loss={
            "aux_focal": {
                "enabled": True,
                "warmup_steps": warmup,
                "lambda": 1.0,
                "gamma": 2.0,
                "detach_p_for_weight": detach,
            }
        }
    )
    torch.manual_seed(0)
    la = torch.randn(32, requires_grad=True)
    lb = torch.randn(32, requires_grad=True)
    click = (torch.rand(32) < 0.5).float()
    conv = click * (torch.rand(32) < 0.5).float()
    return cfg, la, lb, click, conv


def test_focal_off_before_warmup_on_after():
    cfg, la, lb, click, conv = _focal_setup(warmup=100)
    pw = {"ctr": 1.0, "ctcvr": 5.0}
    before = compute_losses(make_out(la, lb), click, conv, step=99, cfg=cfg, pos_weight=pw)
    after = compute_losses(make_out(la, lb), click, conv, step=100, cfg=cfg, pos_weight=pw)
    assert float(before.components["loss_ctcvr_focal"].detach()) == 0.0
    assert float(after.components["loss_ctcvr_focal"].detach()) > 0.0
    assert float(after.total.detach()) > float(before.total.detach())
    assert float(before.components["loss_ctcvr"].detach()) == float(
        before.components["loss_ctcvr_bce"].detach()
    )


def test_a_tensor_switch_gives_the_bool_switchs_values_and_gradients():
    """The static step turns the focal term on with a 0/1 tensor (one graph for both states):
    on either side of the warm-up, every component, the total and the gradients are those of
    the plain bool, to the bit."""
    pw = {"ctr": 1.0, "ctcvr": 5.0}
    for on in (False, True):
        runs = []
        for focal in (on, torch.tensor(float(on))):
            cfg, la, lb, click, conv = _focal_setup(warmup=100)
            res = compute_losses(make_out(la, lb), click, conv, focal=focal, cfg=cfg, pos_weight=pw)
            res.total.backward()
            comps = {k: float(v.detach()) for k, v in res.components.items()}
            runs.append((float(res.total.detach()), comps, la.grad.clone(), lb.grad.clone()))
        (total_b, comps_b, ga_b, gb_b), (total_t, comps_t, ga_t, gb_t) = runs
        assert (comps_b["loss_ctcvr_focal"] > 0) == on
        assert total_t == total_b and comps_t == comps_b
        assert torch.equal(ga_t, ga_b) and torch.equal(gb_t, gb_b)


def test_focal_detach_changes_gradient_not_value():
    results = {}
    for detach in (True, False):
        cfg, la, lb, click, conv = _focal_setup(detach=detach, warmup=0)
        res = compute_losses(make_out(la, lb), click, conv, step=0, cfg=cfg, pos_weight={})
        res.components["loss_ctcvr_focal"].backward()
        results[detach] = (float(res.components["loss_ctcvr_focal"].detach()), lb.grad.clone())
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-6)
    assert not torch.allclose(results[True][1], results[False][1], rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------------------------- CVR aux


def test_cvr_aux_without_clicks_is_zero_and_backward_works():
    cfg = make_cfg()
    la = torch.randn(16, requires_grad=True)
    lb = torch.randn(16, requires_grad=True)
    zeros = torch.zeros(16)
    res = compute_losses(make_out(la, lb), zeros, zeros, step=0, cfg=cfg, pos_weight={})
    aux = res.components["loss_cvr_aux"]
    assert float(aux.detach()) == 0.0 and aux.requires_grad
    aux.backward(retain_graph=True)
    assert lb.grad is not None and torch.all(lb.grad == 0)
    res.total.backward()
    assert torch.isfinite(lb.grad).all()


def test_single_task_mode_components():
    cfg = make_cfg(use_esmm=False, loss={"w_ctr": 2.0, "w_cvr": 0.5})
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 20), rng.normal(0, 1, 20)
    click = (rng.random(20) < 0.5).astype(float)
    conv = click * (rng.random(20) < 0.5)
    res = compute_losses(
        make_out(torch.tensor(a).float(), torch.tensor(b).float()),
        torch.tensor(click).float(),
        torch.tensor(conv).float(),
        step=0,
        cfg=cfg,
        pos_weight={"ctr": 1.5, "ctcvr": 99.0},
    )
    assert set(res.components) == {"loss_ctr", "loss_cvr", "loss_gate_entropy", "loss_gate_balance"}
    l_ctr, _, _, l_cvr = _reference_esmm(a, b, click, conv, 1.5, 1.0)
    assert float(res.components["loss_ctr"].detach()) == pytest.approx(l_ctr, rel=1e-5)
    assert float(res.components["loss_cvr"].detach()) == pytest.approx(l_cvr, rel=1e-5)
    assert float(res.total.detach()) == pytest.approx(2.0 * l_ctr + 0.5 * l_cvr, rel=1e-5)


# -------------------------------------------------------------------------------- gate terms


def test_gate_regularisers_values_and_training_only():
    uniform = torch.full((5, 4), 0.25)
    peaked = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).repeat(5, 1)
    neg_h, kl = gate_regularisers({"ctr": uniform}, 1e-12)
    assert float(neg_h) == pytest.approx(-math.log(4), rel=1e-5)
    assert float(kl) == pytest.approx(0.0, abs=1e-6)
    neg_h2, kl2 = gate_regularisers({"ctr": peaked}, 1e-12)
    assert float(neg_h2) > float(neg_h) and float(kl2) > 0.1
    cfg = make_cfg(gate={"entropy_reg_weight": 0.5, "load_balance_kl_weight": 0.25})
    logits = torch.zeros(5)
    y = torch.zeros(5)
    train = compute_losses(
        make_out(logits, logits, {"ctr": peaked}, training=True), y, y, step=0, cfg=cfg,
        pos_weight={},
    )  # fmt: skip
    evals = compute_losses(
        make_out(logits, logits, {"ctr": peaked}, training=False), y, y, step=0, cfg=cfg,
        pos_weight={},
    )  # fmt: skip
    assert float(evals.components["loss_gate_entropy"].detach()) == 0.0
    assert float((train.total - evals.total).detach()) == pytest.approx(
        0.5 * float(neg_h2) + 0.25 * float(kl2), rel=1e-5
    )


def _train_tiny_mmoe(entropy_weight: float) -> float:
    torch.manual_seed(0)
    cfg = make_cfg(gate={"entropy_reg_weight": entropy_weight, "load_balance_kl_weight": 0.0})
    mmoe = MMoE(6, ["ctr", "cvr"], num_experts=4, expert_dims=[8], dropout=0.0, temperature=1.0)
    heads = torch.nn.ModuleDict({t: torch.nn.Linear(8, 1) for t in ("ctr", "cvr")})
    with torch.no_grad():  # start from confident routing so that drift is visible
        for g in mmoe.gates.values():
            g.output_linear.weight.mul_(4.0)
    params = list(mmoe.parameters()) + list(heads.parameters())
    opt = torch.optim.Adam(params, lr=0.03)
    x = torch.randn(128, 6)
    click = (x[:, 0] + 0.5 * x[:, 1] > 0).float()
    conv = click * (x[:, 2] > 0).float()
    for _ in range(25):
        mixed, gates = mmoe(x)
        logits = {t: heads[t](mixed[t]).squeeze(-1) for t in ("ctr", "cvr")}
        out = SimpleNamespace(logits=logits, gates=gates, training=True, embedding_l2=None)
        res = compute_losses(out, click, conv, step=0, cfg=cfg, pos_weight={})
        opt.zero_grad()
        res.total.backward()
        opt.step()
    mmoe.eval()
    with torch.no_grad():
        _, gates = mmoe(x)
    neg_h, _ = gate_regularisers(gates, 1e-12)
    return -float(neg_h)


def test_entropy_regulariser_makes_routing_more_uniform():
    h0 = _train_tiny_mmoe(0.0)
    h1 = _train_tiny_mmoe(1.0)
    assert h1 > h0 + 0.05
    assert h1 <= math.log(4) + 1e-6


# ------------------------------------------------------------------------------- pos weights


def test_pos_weights_static_with_piecewise_clip_schedule():
    cfg = make_cfg(
        loss={
            "static_pos_weight": {"ctr": 24.7, "ctcvr": 4800},
            "pos_weight_clip": {"ctr": 30, "ctcvr": 300},
            "pos_weight_clip_schedule": {
                "enabled": True,
                "target": "ctcvr",
                "type": "piecewise",
                "milestones": [0, 8000],
                "values": [300, 30],
            },
        }
    )
    pw = PosWeights(cfg)
    assert pw.current(0) == {"ctr": 24.7, "ctcvr": 300.0}
    assert pw.current(7999) == {"ctr": 24.7, "ctcvr": 300.0}
    assert pw.current(8000) == {"ctr": 24.7, "ctcvr": 30.0}


def test_pos_weights_linear_schedule_both_targets():
    cfg = make_cfg(
        loss={
            "static_pos_weight": {"ctr": 1000, "ctcvr": 1000},
            "pos_weight_clip": {"ctr": 5, "ctcvr": 5},
            "pos_weight_clip_schedule": {
                "enabled": True,
                "target": "both",
                "type": "linear",
                "start_step": 100,
                "end_step": 300,
                "start_value": 400,
                "end_value": 100,
            },
        }
    )
    pw = PosWeights(cfg)
    assert pw.current(0) == {"ctr": 400.0, "ctcvr": 400.0}
    assert pw.current(200) == {"ctr": 250.0, "ctcvr": 250.0}
    assert pw.current(10_000) == {"ctr": 100.0, "ctcvr": 100.0}


def test_pos_weights_dynamic_running_rates_and_state():
    cfg = make_cfg(
        loss={
            "pos_weight_dynamic": True,
            "static_pos_weight": {"ctr": 7.0, "ctcvr": 11.0},
            "pos_weight_clip": {"ctr": 1000, "ctcvr": 50},
        }
    )
    pw = PosWeights(cfg)
    assert pw.current(0) == {"ctr": 7.0, "ctcvr": 11.0}  # nothing seen yet
    pw.observe(torch.tensor([1.0, 0, 0, 0]), torch.zeros(4))
    assert pw.current(0) == {"ctr": 3.0, "ctcvr": 11.0}  # r = 1/4; no conversion yet
    pw.observe(torch.tensor([1.0, 1, 0, 0, 0, 0]), torch.tensor([1.0, 0, 0, 0, 0, 0]))
    cur = pw.current(0)
    assert cur["ctr"] == pytest.approx((1 - 0.3) / 0.3)  # 3 clicks / 10 rows
    assert cur["ctcvr"] == pytest.approx(9.0)  # 1 conversion / 10 rows
    pw.observe(torch.zeros(90), torch.zeros(90))
    cur = pw.current(0)
    assert cur["ctr"] == pytest.approx(0.97 / 0.03)  # 3 / 100
    assert cur["ctcvr"] == 50.0  # (1 - 0.01) / 0.01 = 99, clipped
    state = pw.state_dict()
    pw2 = PosWeights(cfg)
    pw2.load_state_dict(state)
    assert pw2.current(0) == cur
