"""Tests of rec_pipeline.report: figures from a training history / metrics, and the HTML page."""

from __future__ import annotations

import base64
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from rec_pipeline.metrics.evaluate import compute_metrics
from rec_pipeline.report.html import figure_to_data_uri, render_report, render_value
from rec_pipeline.report.plots import (
    FIGURE_NAMES,
    all_figures,
    calibration_plot,
    gate_plots,
    grad_diagnostics,
    health_plots,
    roc_curves,
    training_curves,
    validation_auc,
)

HISTORY_PLOTS = [training_curves, validation_auc, gate_plots, grad_diagnostics, health_plots]


def _history(steps: int = 120, experts: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []

    def add(step, kind, name, value, **structure):
        rows.append({"step": step, "kind": kind, "name": name, "value": float(value), **structure})

    for s in range(1, steps + 1):
        add(s, "train", "loss_total", 1.0 / s**0.3 + 0.05 * rng.random())
        for comp in (
            "ctr",
            "ctcvr",
            "ctcvr_bce",
            "ctcvr_focal",
            "cvr_aux",
            "gate_entropy",
            "gate_balance",
        ):
            add(s, "train", f"loss_{comp}", 0.5 / s**0.2 + 0.01 * rng.random())
        add(s, "train", "lr_dense", 6e-4 * min(1, s / 20))
        add(s, "train", "lr_sparse", 1e-3 * min(1, s / 20))
        add(s, "train", "pos_weight_ctr", 1.0)
        add(s, "train", "pos_weight_ctcvr", max(30.0, 300 - 3 * s))
        add(s, "train", "samples_per_s", 5e4 + 1e3 * rng.random())
        if s % 10 == 0:
            for task in ("ctr", "cvr"):
                w = rng.dirichlet(np.ones(experts))
                for i in range(experts):
                    add(s, "health", "gate_weight", w[i], task=task, expert=i)
                add(s, "health", "gate_entropy", float(-(w * np.log(w)).sum()), task=task)
                add(s, "health", "dead_experts", 0, task=task)
                add(s, "health", "logit_mean", -2 + rng.random(), task=task)
                add(s, "health", "logit_std", 0.5, task=task)
                add(s, "health", "prob_mean", 0.05 + 0.01 * rng.random(), task=task)
            add(s, "health", "pos_rate", 0.05, task="ctr")
            add(s, "health", "pos_rate", 0.002, task="ctcvr")
            add(s, "grad", "grad_norm", rng.random() + 0.1, task="ctr")
            add(s, "grad", "grad_norm", rng.random() * 10 + 0.1, task="ctcvr")
            add(s, "grad", "grad_cos", rng.uniform(-1, 1), task="ctr", other_task="ctcvr")
        if s % 30 == 0:
            for name in ("auc_ctr", "auc_cvr", "auc_ctcvr", "auc_primary"):
                add(s, "valid", name, 0.6 + 0.001 * s)
            add(s, "valid", "logloss_ctr", 0.2 - 0.0005 * s)
    return pd.DataFrame(rows)


def _predictions(n: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    p_ctr = rng.uniform(0.01, 0.4, n)
    p_cvr = rng.uniform(0.01, 0.5, n)
    click = (rng.random(n) < p_ctr).astype(int)
    conv = ((rng.random(n) < p_cvr) & (click == 1)).astype(int)
    return pd.DataFrame(
        {
            "sample_id": np.arange(n),
            "click": click,
            "conversion": conv,
            "p_ctr": p_ctr,
            "p_cvr": p_cvr,
            "p_ctcvr": p_ctr * p_cvr,
        }
    )


def _metrics(pred: pd.DataFrame, keep_prob: float = 0.5) -> dict:
    m = compute_metrics(
        pred["click"].to_numpy(),
        pred["conversion"].to_numpy(),
        pred["p_ctr"].to_numpy(),
        pred["p_cvr"].to_numpy(),
        esmm=True,
        keep_prob=keep_prob,
        n_bins=8,
        truth={"p_ctr": pred["p_ctr"].to_numpy(), "p_cvr": pred["p_cvr"].to_numpy()},
    )
    m.update(split="test", checkpoint="best")
    return m


def _visible_axes(fig: Figure):
    return [ax for ax in fig.axes if ax.get_visible() and ax.axison]


@pytest.fixture(autouse=True)
def _no_pyplot_leak():
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before, "report code must not register pyplot figures"


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plot", HISTORY_PLOTS, ids=lambda f: f.__name__)
def test_history_plots_on_full_history(plot):
    fig = plot(_history())
    assert isinstance(fig, Figure)
    assert _visible_axes(fig)
    assert all(ax.lines or ax.collections for ax in _visible_axes(fig))
    assert figure_to_data_uri(fig).startswith("data:image/png;base64,")


def test_training_curves_panels():
    fig = training_curves(_history())
    titles = {ax.get_title() for ax in _visible_axes(fig)}
    assert {"total loss", "loss components", "learning rate", "pos_weight", "throughput"} <= titles
    comp = next(ax for ax in fig.axes if ax.get_title() == "loss components")
    labels = {t.get_text() for t in comp.get_legend().get_texts()}
    assert {"ctr", "ctcvr", "ctcvr_bce", "ctcvr_focal", "cvr_aux", "gate_entropy"} <= labels


def test_gate_plots_panels():
    fig = gate_plots(_history(experts=4))
    titles = [ax.get_title() for ax in _visible_axes(fig)]
    assert "gate weights: ctr" in titles and "gate weights: cvr" in titles
    assert "gate entropy" in titles and "dead experts" in titles
    ax = next(a for a in fig.axes if a.get_title() == "gate weights: ctr")
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"e0", "e1", "e2", "e3"}


@pytest.mark.parametrize("plot", HISTORY_PLOTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "history",
    [
        None,
        pd.DataFrame(),
        pd.DataFrame(columns=["step", "kind", "name", "value"]),
        pd.DataFrame({"step": [1], "name": ["loss_total"]}),  # missing columns
        pd.DataFrame(
            {
                "step": [1, 2],
                "kind": ["train"] * 2,
                "name": ["loss_total"] * 2,
                "value": [np.nan, "x"],
            }
        ),
    ],
    ids=["none", "empty", "no-rows", "bad-columns", "non-numeric"],
)
def test_history_plots_on_empty_history(plot, history):
    fig = plot(history)
    assert isinstance(fig, Figure)
    figure_to_data_uri(fig)


@pytest.mark.parametrize("plot", HISTORY_PLOTS, ids=lambda f: f.__name__)
def test_history_plots_on_partial_history(plot):
    h = _history(60)
    partial = h[
        h["name"].isin(["loss_total", "lr_dense", "grad_cos", "auc_ctr"])
        | ((h["name"] == "gate_weight") & (h["task"] == "ctr") & (h["expert"] == 0))
    ]
    figure_to_data_uri(plot(partial))
    single = h[h["step"] == 30]  # one point per series
    figure_to_data_uri(plot(single))
    only_valid = h[h["kind"] == "valid"]
    figure_to_data_uri(plot(only_valid))


def test_roc_curves_and_partial_predictions():
    pred = _predictions()
    fig = roc_curves(pred)
    assert len(_visible_axes(fig)) == 3
    assert all(len(ax.lines) == 2 for ax in _visible_axes(fig))  # diagonal + curve
    figure_to_data_uri(fig)
    # no conversions at all: CVR/CTCVR undefined, no crash
    no_conv = pred.assign(conversion=0)
    figure_to_data_uri(roc_curves(no_conv))
    figure_to_data_uri(roc_curves(pred.drop(columns=["p_ctcvr", "p_cvr"])))
    figure_to_data_uri(roc_curves(pred.iloc[:0]))
    figure_to_data_uri(roc_curves(None))


def test_calibration_plot():
    pred = _predictions()
    fig = calibration_plot(_metrics(pred))
    axes = _visible_axes(fig)
    assert len(axes) == 3
    ctr = axes[0]
    assert len(ctr.lines) == 3  # diagonal, corrected, uncorrected
    figure_to_data_uri(fig)
    fig = calibration_plot(_metrics(pred, keep_prob=1.0))
    assert len(_visible_axes(fig)[0].lines) == 2
    for bad in (
        None,
        {},
        {"tasks": {}},
        {"tasks": {"ctr": {"calibration": []}}},
        {"tasks": {"ctr": None}},
    ):
        figure_to_data_uri(calibration_plot(bad))


def test_all_figures_keys_and_missing_inputs():
    pred = _predictions()
    figs = all_figures(_history(), _metrics(pred), pred)
    assert tuple(figs) == FIGURE_NAMES
    assert all(isinstance(f, Figure) for f in figs.values())
    figs = all_figures(None, None, None)
    assert tuple(figs) == FIGURE_NAMES


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------


def _report(previous=None, title="Run <42> & co", params=None, data_summary=None):
    pred = _predictions()
    figs = all_figures(_history(), _metrics(pred), pred)
    html_text = render_report(
        figs,
        params
        or {
            "model": {"num_experts": 3, "tasks": ["ctr", "cvr"]},
            "training": {"lr": 6e-4, "note": "<script>alert(1)</script>"},
        },
        data_summary
        or {
            "rows": {"train": 1000, "valid": 200, "test": 300},
            "label_rates": {"train": {"click": 0.05, "conversion": 0.001}, "test": {"click": 0.04}},
            "vocab_sizes": {"101": 1234, "205": 5678},
            "quality": {"inconsistent_rows_dropped": 3, "unknown_fields": {"999": 12}},
            "fields": [{"field": "101", "kind": "single"}, {"field": "210", "kind": "multi"}],
        },
        _metrics(pred),
        previous,
        title,
    )
    return figs, html_text


def test_html_is_self_contained_with_all_figures():
    figs, page = _report()
    assert page.startswith("<!DOCTYPE html>")
    uris = re.findall(r'<img src="(data:image/png;base64,[A-Za-z0-9+/=]+)"', page)
    assert len(uris) == len(figs)
    for uri in uris:
        assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for fig_name in figs:
        assert f'id="fig-{fig_name}"' in page
    assert "http://" not in page and "https://" not in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    # sections
    for heading in ("Metrics", "Data summary", "Figures", "Parameters"):
        assert f"<h2>{heading}</h2>" in page
    assert "<details>" in page and "num_experts: 3" in page
    assert "oracle AUC" in page and "gap to oracle" in page
    assert "inconsistent_rows_dropped" in page and "5,678" in page


def test_html_escapes_text():
    _, page = _report(title='Bad <b>"title"</b> & more')
    assert "<title>Bad &lt;b&gt;&quot;title&quot;&lt;/b&gt; &amp; more</title>" in page
    assert "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in page
    assert (
        render_value({"<k>": "<v>"})
        == "<table><tbody><tr><th>&lt;k&gt;</th><td>&lt;v&gt;</td></tr></tbody></table>"
    )


def test_comparison_only_with_previous_metrics():
    _, page = _report()
    assert "Comparison with the previous run" not in page
    assert 'id="comparison"' not in page
    prev = _metrics(_predictions().assign(p_ctr=lambda d: d["p_ctr"][::-1].to_numpy()))
    prev["checkpoint"] = "last"
    _, page = _report(previous=prev)
    assert "Comparison with the previous run" in page and 'id="comparison"' in page
    section = page.split('id="comparison"', 1)[1].split("</section>", 1)[0]
    for key in ("auc_primary", "auc_ctr", "auc_cvr", "auc_ctcvr", "logloss_ctr"):
        assert f"<th>{key}</th>" in section
    assert 'class="num good"' in section  # the current CTR model is better than the reversed one
    # a flat previous dict is accepted too
    _, page = _report(previous={"auc_ctr": 0.5, "auc_primary": 0.9})
    assert "Comparison with the previous run" in page


def test_render_value_generic_nesting():
    out = render_value({"a": {"x": 1, "y": 2.5}, "b": {"x": 3}})
    assert out.count("<tr>") == 3 and "<th>y</th>" in out
    out = render_value({"nested": {"deeper": {"k": [1, 2, 3]}}, "empty": {}, "n": None})
    assert "1, 2, 3" in out and "empty" in out and "—" in out
    out = render_value(list(range(100)))
    assert "50 more" in out
    assert render_value(np.int64(1234567)) == "1,234,567"
