"""Diagnostics: per-task gradient statistics, model health rows, and the history they fill."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from rec_pipeline.config import load_config
from rec_pipeline.train.diagnostics import (
    health_metrics,
    task_gradient_stats,
    task_losses_for_diagnostics,
)
from rec_pipeline.train.loop import HISTORY_COLUMNS, History
from rec_pipeline.train.losses import ESMM_COMPONENTS


def make_out(l_ctr, l_cvr, gates):
    return SimpleNamespace(
        logits={"ctr": l_ctr, "cvr": l_cvr}, gates=gates, training=False, embedding_l2=None
    )


# ------------------------------------------------------------------------------ diagnostics


def test_task_gradient_stats_and_health_metrics():
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 4)
    heads = torch.nn.ModuleDict({"ctr": torch.nn.Linear(4, 1), "cvr": torch.nn.Linear(4, 1)})
    model = SimpleNamespace(shared_parameters=lambda: list(shared.parameters()))
    x = torch.randn(10, 3)
    h = shared(x)
    losses = {"ctr": heads["ctr"](h).sum(), "cvr": -heads["ctr"](h).sum()}
    stats = _by_structure(task_gradient_stats(model, losses))
    assert stats[("grad_cos", "ctr", None, "cvr")] == pytest.approx(-1.0, abs=1e-5)
    norm_ctr = stats[("grad_norm", "ctr", None, None)]
    assert norm_ctr == pytest.approx(stats[("grad_norm", "cvr", None, None)], rel=1e-6)
    assert shared.weight.grad is None  # .grad untouched
    losses["cvr"] = heads["cvr"](h).sum() * 0 + torch.zeros((), requires_grad=True)
    stats = _by_structure(task_gradient_stats(model, losses))
    assert stats[("grad_cos", "ctr", None, "cvr")] == 0.0

    cfg = load_config({"esmm": {"lambda_cvr_aux": 0.1}})
    comps = {k: torch.tensor(float(i)) for i, k in enumerate(ESMM_COMPONENTS)}
    tl = task_losses_for_diagnostics(comps, cfg)
    assert float(tl["cvr"]) == pytest.approx(1.0 + 0.1 * 4.0)

    g = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    out = make_out(torch.zeros(2), torch.tensor([0.0, 2.0]), {"ctr": g})
    m = _by_structure(health_metrics(out, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])))
    assert [m[("gate_weight", "ctr", e, None)] for e in range(4)] == pytest.approx([0.6, 0.4, 0, 0])
    assert m[("dead_experts", "ctr", None, None)] == 2
    ent = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3) + 2 * 0.5 * math.log(0.5)) / 2
    assert m[("gate_entropy", "ctr", None, None)] == pytest.approx(ent, rel=1e-5)
    assert m[("logit_mean", "cvr", None, None)] == pytest.approx(1.0)
    assert m[("logit_std", "cvr", None, None)] == pytest.approx(1.0)
    assert m[("prob_mean", "ctr", None, None)] == pytest.approx(0.5)
    p_cvr = 1 / (1 + math.exp(-2.0))
    assert m[("prob_mean", "ctcvr", None, None)] == pytest.approx(0.5 * (0.5 + p_cvr) / 2)
    assert m[("pos_rate", "ctr", None, None)] == pytest.approx(0.5)
    assert m[("pos_rate", "ctcvr", None, None)] == 0.0


def _by_structure(rows: list[dict]) -> dict[tuple, float]:
    """History rows keyed by (name, task, expert, other_task); a duplicate key fails."""
    out = {}
    for r in rows:
        key = (r["name"], r.get("task"), r.get("expert"), r.get("other_task"))
        assert key not in out, key
        out[key] = r["value"]
    return out


def test_history_frame_keeps_structure_in_columns():
    g = torch.tensor([[0.25, 0.75], [0.75, 0.25]])
    out = make_out(torch.zeros(2), torch.zeros(2), {"ctr": g})
    history = History()
    history.add(3, "train", {"loss_total": 0.5})
    history.add_rows(4, "health", health_metrics(out, torch.ones(2), torch.zeros(2)))
    frame = history.frame()
    assert list(frame.columns) == HISTORY_COLUMNS
    gates = frame[frame["name"] == "gate_weight"]
    assert gates["task"].tolist() == ["ctr", "ctr"] and gates["expert"].tolist() == [0, 1]
    assert gates["value"].tolist() == pytest.approx([0.5, 0.5])
    assert (gates["step"] == 4).all() and (gates["kind"] == "health").all()
    plain = frame[frame["name"] == "loss_total"].iloc[0]
    assert plain["value"] == 0.5 and pd.isna(plain["task"]) and pd.isna(plain["expert"])
    assert not frame["name"].str.contains("_e[0-9]").any()  # no structure left in names
