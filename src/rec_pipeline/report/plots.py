"""Matplotlib figures of a training run and its evaluation.

Inputs are plain data:

* ``history``: long-format ``pandas.DataFrame`` with columns ``step``, ``kind``
  (``"train" | "valid" | "health" | "grad"``), ``name`` and ``value``;
* ``metrics``: the dict of :func:`rec_pipeline.metrics.evaluate.compute_metrics` (plus ``split``
  and ``checkpoint``);
* ``predictions``: ``pandas.DataFrame`` with ``click``, ``conversion``, ``p_ctr``, ``p_cvr`` and
  ``p_ctcvr``.

Every function returns a :class:`matplotlib.figure.Figure` built with the object-oriented API on an
Agg canvas: nothing is registered with ``pyplot``, so no global figure state is created or leaked
and no GUI backend is touched. Missing inputs, kinds or names are skipped; a figure with nothing to
show carries a short note instead of raising.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from rec_pipeline.metrics.auc import roc_auc, roc_curve_points

__all__ = [
    "FIGURE_NAMES",
    "all_figures",
    "calibration_plot",
    "gate_plots",
    "grad_diagnostics",
    "health_plots",
    "roc_curves",
    "training_curves",
    "validation_auc",
]

log = logging.getLogger(__name__)

TASKS = ("ctr", "cvr", "ctcvr")
_HISTORY_COLUMNS = ("step", "kind", "name", "value")
_GATE_RE = re.compile(r"^gate_(?P<task>.+)_e(?P<expert>\d+)$")
_PANEL_W, _PANEL_H = 5.6, 3.4


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _new_figure(
    n_panels: int,
    ncols: int = 2,
    title: str | None = None,
    panel_size: tuple[float, float] = (_PANEL_W, _PANEL_H),
) -> tuple[Figure, list[Axes]]:
    n_panels = max(n_panels, 1)
    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows + (0.4 if title else 0)))
    FigureCanvasAgg(fig)
    fig.set_layout_engine("constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=12, fontweight="bold")
    return fig, axes[:n_panels]


def _note_figure(title: str, message: str) -> Figure:
    fig, (ax,) = _new_figure(1, 1, title)
    _note(ax, message)
    ax.set_axis_off()
    return fig


def _note(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _clean_history(history: pd.DataFrame | None) -> pd.DataFrame:
    """History restricted to well-formed rows (numeric step and value, string kind and name)."""
    if history is None or not isinstance(history, pd.DataFrame):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in _HISTORY_COLUMNS})
    if any(c not in history.columns for c in _HISTORY_COLUMNS) or history.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in _HISTORY_COLUMNS})
    h = history.loc[:, list(_HISTORY_COLUMNS)].copy()
    h["step"] = pd.to_numeric(h["step"], errors="coerce")
    h["value"] = pd.to_numeric(h["value"], errors="coerce")
    h["kind"] = h["kind"].astype(str)
    h["name"] = h["name"].astype(str)
    h = h[
        np.isfinite(h["step"].to_numpy(dtype=float)) & np.isfinite(h["value"].to_numpy(dtype=float))
    ]
    return h.sort_values("step", kind="stable")


class _History:
    """Fast access to the series of a cleaned long-format history."""

    def __init__(self, history: pd.DataFrame | None) -> None:
        h = _clean_history(history)
        self._series: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        for (kind, name), g in h.groupby(["kind", "name"], sort=False):
            self._series[(kind, name)] = (
                g["step"].to_numpy(dtype=float),
                g["value"].to_numpy(dtype=float),
            )

    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self._series if k == kind)

    def get(self, kind: str, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self._series.get((kind, name))

    def matching(self, kind: str, pred: Callable[[str], bool]) -> list[str]:
        return [n for n in self.names(kind) if pred(n)]


def _ema(values: np.ndarray, span: int) -> np.ndarray:
    return pd.Series(values).ewm(span=span, adjust=True).mean().to_numpy()


def _plot_series(
    ax: Axes, steps: np.ndarray, values: np.ndarray, label: str, smooth: bool = False, **kw: Any
) -> None:
    if smooth and values.size > 50:
        (line,) = ax.plot(steps, values, alpha=0.25, linewidth=0.8, **kw)
        ax.plot(
            steps,
            _ema(values, max(5, values.size // 50)),
            color=line.get_color(),
            linewidth=1.6,
            label=label,
        )
    else:
        marker = "o" if values.size <= 30 else None
        ax.plot(steps, values, label=label, marker=marker, markersize=3, **kw)


def _maybe_log_y(ax: Axes, arrays: Iterable[np.ndarray]) -> None:
    vals = [a for a in arrays if a.size]
    if not vals:
        return
    allv = np.concatenate(vals)
    pos = allv[allv > 0]
    if allv.size and np.all(allv > 0) and pos.max() / pos.min() > 20:
        ax.set_yscale("log")


def _lines_panel(
    ax: Axes,
    hist: _History,
    kind: str,
    names: list[str],
    title: str,
    ylabel: str = "",
    smooth: bool = False,
    log_y: bool | None = None,
    label: Callable[[str], str] = str,
) -> None:
    arrays = []
    for name in names:
        s = hist.get(kind, name)
        if s is None:
            continue
        _plot_series(ax, s[0], s[1], label(name), smooth=smooth)
        arrays.append(s[1])
    ax.set_title(title)
    ax.set_xlabel("step")
    if ylabel:
        ax.set_ylabel(ylabel)
    if log_y is None:
        _maybe_log_y(ax, arrays)
    elif log_y and arrays and all(np.all(a > 0) for a in arrays):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if len(names) > 1 or (names and label(names[0]) != title):
        ax.legend(fontsize=8, loc="best")


def _strip(prefix: str) -> Callable[[str], str]:
    return lambda n: n[len(prefix) :] if n.startswith(prefix) else n


# --------------------------------------------------------------------------------------------------
# history figures
# --------------------------------------------------------------------------------------------------


def training_curves(history: pd.DataFrame | None) -> Figure:
    """Total loss, every loss component, both learning rates, pos_weight and throughput."""
    h = _History(history)
    panels: list[tuple[str, list[str], dict[str, Any]]] = []
    if h.get("train", "loss_total") is not None:
        panels.append(("total loss", ["loss_total"], {"smooth": True, "ylabel": "loss"}))
    components = h.matching("train", lambda n: n.startswith("loss_") and n != "loss_total")
    if components:
        panels.append(("loss components", components, {"smooth": True, "label": _strip("loss_")}))
    lrs = h.matching("train", lambda n: n.startswith("lr_") or n == "lr")
    if lrs:
        panels.append(("learning rate", lrs, {"label": _strip("lr_"), "log_y": False}))
    pws = h.matching("train", lambda n: n.startswith("pos_weight"))
    if pws:
        panels.append(("pos_weight", pws, {"label": _strip("pos_weight_")}))
    if h.get("train", "samples_per_s") is not None:
        panels.append(
            (
                "throughput",
                ["samples_per_s"],
                {"smooth": True, "ylabel": "samples / s", "log_y": False},
            )
        )
    if not panels:
        return _note_figure("Training curves", "no training history")
    fig, axes = _new_figure(len(panels), 2, "Training curves")
    for ax, (title, names, opts) in zip(axes, panels, strict=True):
        _lines_panel(ax, h, "train", names, title, **opts)
    return fig


def validation_auc(history: pd.DataFrame | None) -> Figure:
    """Validation ``auc_primary`` (best marked), per-task AUCs, log losses and oracle gaps."""
    h = _History(history)
    primary = ["auc_primary"] if h.get("valid", "auc_primary") is not None else []
    aucs = h.matching("valid", lambda n: n.startswith("auc_") and n != "auc_primary")
    losses = h.matching("valid", lambda n: n.startswith("logloss_"))
    gaps = h.matching("valid", lambda n: n.startswith("oracle_gap_"))
    panels = [p for p in (primary, aucs, losses, gaps) if p]
    if not panels:
        return _note_figure("Validation", "no validation history")
    fig, axes = _new_figure(len(panels), 2, "Validation")
    it = iter(axes)
    if primary:
        ax = next(it)
        _lines_panel(ax, h, "valid", primary, "auc_primary", log_y=False)
        steps, values = h.get("valid", "auc_primary")  # type: ignore[misc]
        i = int(np.argmax(values))
        ax.scatter([steps[i]], [values[i]], s=90, marker="*", color="black", zorder=5)
        ax.annotate(
            f"best {values[i]:.4f} @ step {steps[i]:g}",
            (steps[i], values[i]),
            textcoords="axes fraction",
            xytext=(0.02, 0.92),
            fontsize=8,
        )
    if aucs:
        _lines_panel(next(it), h, "valid", aucs, "AUC per task", label=_strip("auc_"), log_y=False)
    if losses:
        _lines_panel(next(it), h, "valid", losses, "log loss", label=_strip("logloss_"))
    if gaps:
        ax = next(it)
        _lines_panel(
            ax, h, "valid", gaps, "oracle AUC gap", label=_strip("oracle_gap_"), log_y=False
        )
        ax.axhline(0.0, color="0.5", linewidth=0.8)
    return fig


def gate_plots(history: pd.DataFrame | None) -> Figure:
    """MMoE gate weight per task and expert over steps, gate entropy and dead experts."""
    h = _History(history)
    gates: dict[str, list[tuple[int, str]]] = {}
    for name in h.names("health"):
        m = _GATE_RE.match(name)
        if m and not name.startswith("gate_entropy_"):
            gates.setdefault(m.group("task"), []).append((int(m.group("expert")), name))
    entropies = h.matching("health", lambda n: n.startswith("gate_entropy_"))
    dead = h.matching("health", lambda n: n.startswith("dead_experts_"))
    n_panels = len(gates) + bool(entropies) + bool(dead)
    if n_panels == 0:
        return _note_figure("MMoE gates", "no gate statistics in the history")
    fig, axes = _new_figure(n_panels, 2, "MMoE gates")
    it = iter(axes)
    n_experts = 0
    for task in sorted(gates):
        experts = sorted(gates[task])
        n_experts = max(n_experts, len(experts))
        ax = next(it)
        _lines_panel(
            ax,
            h,
            "health",
            [n for _, n in experts],
            f"gate weights: {task}",
            ylabel="mean gate weight",
            log_y=False,
            label=lambda n: f"e{_GATE_RE.match(n).group('expert')}",  # type: ignore[union-attr]
        )
        ax.axhline(1.0 / len(experts), color="0.5", linestyle="--", linewidth=0.8)
        ax.set_ylim(bottom=0.0)
    if entropies:
        ax = next(it)
        _lines_panel(
            ax, h, "health", entropies, "gate entropy", label=_strip("gate_entropy_"), log_y=False
        )
        if n_experts > 1:
            ax.axhline(math.log(n_experts), color="0.5", linestyle="--", linewidth=0.8)
            ax.text(
                0.01,
                math.log(n_experts),
                " uniform",
                transform=ax.get_yaxis_transform(),
                va="bottom",
                fontsize=8,
                color="0.4",
            )
    if dead:
        _lines_panel(
            next(it), h, "health", dead, "dead experts", label=_strip("dead_experts_"), log_y=False
        )
    return fig


def grad_diagnostics(history: pd.DataFrame | None) -> Figure:
    """Per-task gradient norms on the shared parameters and the cosine between task gradients."""
    h = _History(history)
    norms = h.matching("grad", lambda n: n.startswith("grad_norm"))
    coss = h.matching("grad", lambda n: n.startswith("grad_cos"))
    panels = [p for p in (norms, coss) if p]
    if not panels:
        return _note_figure("Gradient diagnostics", "no gradient diagnostics in the history")
    fig, axes = _new_figure(len(panels), 2, "Gradient diagnostics")
    it = iter(axes)
    if norms:
        _lines_panel(
            next(it), h, "grad", norms, "gradient norm", label=_strip("grad_norm_"), log_y=True
        )
    if coss:
        ax = next(it)
        _lines_panel(
            ax,
            h,
            "grad",
            coss,
            "gradient cosine",
            label=_strip("grad_cos_"),
            smooth=True,
            log_y=False,
        )
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_ylim(-1.05, 1.05)
    return fig


def health_plots(history: pd.DataFrame | None) -> Figure:
    """Logit mean ± std per task, mean predicted probability and positive rates."""
    h = _History(history)
    logit_tasks = sorted(
        {
            n[len("logit_") : -len("_mean")]
            for n in h.names("health")
            if re.match(r"^logit_.+_mean$", n)
        }
        | {
            n[len("logit_") : -len("_std")]
            for n in h.names("health")
            if re.match(r"^logit_.+_std$", n)
        }
    )
    probs = h.matching("health", lambda n: n.startswith("prob_") and n.endswith("_mean"))
    rates = h.matching("health", lambda n: n.startswith("pos_rate_"))
    n_panels = bool(logit_tasks) + bool(probs or rates)
    if n_panels == 0:
        return _note_figure("Model health", "no health statistics in the history")
    fig, axes = _new_figure(n_panels, 2, "Model health")
    it = iter(axes)
    if logit_tasks:
        ax = next(it)
        for task in logit_tasks:
            mean = h.get("health", f"logit_{task}_mean")
            std = h.get("health", f"logit_{task}_std")
            if mean is not None:
                (line,) = ax.plot(mean[0], mean[1], label=task)
                if (
                    std is not None
                    and std[0].size == mean[0].size
                    and np.array_equal(std[0], mean[0])
                ):
                    ax.fill_between(
                        mean[0],
                        mean[1] - std[1],
                        mean[1] + std[1],
                        alpha=0.2,
                        color=line.get_color(),
                    )
            elif std is not None:
                ax.plot(std[0], std[1], linestyle=":", label=f"{task} std")
        ax.set_title("logits (mean ± std)")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if probs or rates:
        ax = next(it)
        arrays = []
        for name in probs:
            s = h.get("health", name)
            if s is not None:
                ax.plot(s[0], s[1], label=f"pred {name[len('prob_') : -len('_mean')]}")
                arrays.append(s[1])
        for name in rates:
            s = h.get("health", name)
            if s is not None:
                ax.plot(s[0], s[1], linestyle="--", label=f"rate {name[len('pos_rate_') :]}")
                arrays.append(s[1])
        _maybe_log_y(ax, arrays)
        ax.set_title("mean prediction vs positive rate")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------------
# evaluation figures
# --------------------------------------------------------------------------------------------------


def _task_columns(predictions: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray] | str:
    """(scores, labels) of a task from the predictions table, or the reason it is unavailable."""
    cols = predictions.columns

    def col(name: str) -> np.ndarray:
        return pd.to_numeric(predictions[name], errors="coerce").to_numpy(dtype=float)

    if task == "ctr":
        if "p_ctr" not in cols or "click" not in cols:
            return "needs p_ctr and click"
        return col("p_ctr"), col("click")
    if task == "cvr":
        if not {"p_cvr", "conversion", "click"} <= set(cols):
            return "needs p_cvr, conversion and click"
        clicked = col("click") == 1
        return col("p_cvr")[clicked], col("conversion")[clicked]
    if "conversion" not in cols:
        return "needs conversion"
    if "p_ctcvr" in cols:
        return col("p_ctcvr"), col("conversion")
    if {"p_ctr", "p_cvr"} <= set(cols):
        return col("p_ctr") * col("p_cvr"), col("conversion")
    return "needs p_ctcvr (or p_ctr and p_cvr)"


_TASK_TITLES = {"ctr": "CTR (all rows)", "cvr": "CVR (clicked rows)", "ctcvr": "CTCVR (all rows)"}


def roc_curves(predictions: pd.DataFrame | None, max_points: int = 512) -> Figure:
    """ROC curve per task: CTR, CVR on clicked rows, CTCVR; AUC in the legend."""
    if predictions is None or not isinstance(predictions, pd.DataFrame) or predictions.empty:
        return _note_figure("ROC curves", "no predictions")
    fig, axes = _new_figure(3, 3, "ROC curves", panel_size=(4.2, 4.2))
    for ax, task in zip(axes, TASKS, strict=True):
        ax.set_title(_TASK_TITLES[task])
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.grid(True, alpha=0.3)
        data = _task_columns(predictions, task)
        if isinstance(data, str):
            _note(ax, data)
            continue
        scores, labels = data
        ok = np.isfinite(scores) & np.isfinite(labels)
        scores, labels = scores[ok], labels[ok]
        labels = labels == 1
        res = roc_auc(scores, labels)
        if res.value is None:
            _note(ax, f"AUC undefined:\n{res.reason}")
            continue
        fpr, tpr = roc_curve_points(scores, labels, max_points=max_points)
        ax.plot(
            fpr, tpr, linewidth=1.6, label=f"AUC {res.value:.4f}\n{res.n_pos:,} / {res.n:,} pos"
        )
        ax.legend(loc="lower right", fontsize=8)
    return fig


def calibration_plot(metrics: Mapping[str, Any] | None) -> Figure:
    """Reliability diagram per task from the calibration bins of the metric dict.

    Filled markers: the prediction after the negative-sampling correction; hollow markers: the
    uncorrected prediction when it differs. Log-log axes when all rates are positive.
    """
    tasks = (metrics or {}).get("tasks") if isinstance(metrics, Mapping) else None
    if not isinstance(tasks, Mapping) or not tasks:
        return _note_figure("Calibration", "no calibration bins in the metrics")
    names = [t for t in TASKS if t in tasks] + [t for t in tasks if t not in TASKS]
    fig, axes = _new_figure(
        len(names), 3, "Calibration (predicted vs observed rate)", panel_size=(4.4, 4.2)
    )
    for ax, task in zip(axes, names, strict=True):
        block = tasks.get(task) or {}
        ax.set_title(_TASK_TITLES.get(task, task))
        ax.set_xlabel("mean predicted")
        ax.set_ylabel("observed")
        ax.grid(True, alpha=0.3, which="both")
        bins = [b for b in (block.get("calibration") or []) if isinstance(b, Mapping)]
        pts = [
            (b.get("mean_pred"), b.get("observed"), b.get("mean_pred_uncorrected"))
            for b in bins
            if b.get("mean_pred") is not None and b.get("observed") is not None
        ]
        if not pts:
            _note(ax, "no calibration bins")
            continue
        pred = np.array([p[0] for p in pts], dtype=float)
        obs = np.array([p[1] for p in pts], dtype=float)
        raw = np.array([np.nan if p[2] is None else p[2] for p in pts], dtype=float)
        show_raw = np.isfinite(raw).any() and not np.allclose(raw, pred, equal_nan=True)
        values = np.concatenate([pred, obs, raw[np.isfinite(raw)] if show_raw else []])
        use_log = bool(np.all(values > 0))
        lo = values.min() if values.size else 0.0
        hi = values.max() if values.size else 1.0
        if use_log:
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_minor_formatter(NullFormatter())
            lo, hi = lo / 1.5, hi * 1.5
        else:
            pad = 0.05 * (hi - lo or 1.0)
            lo, hi = max(lo - pad, 0.0), hi + pad
        ax.plot([lo, hi], [lo, hi], color="0.6", linestyle="--", linewidth=0.8)
        ax.plot(pred, obs, marker="o", label="corrected" if show_raw else "model")
        if show_raw:
            ax.plot(
                raw, obs, marker="o", markerfacecolor="none", linestyle=":", label="uncorrected"
            )
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ll = block.get("logloss")
        label = f"logloss {ll:.4g}" if isinstance(ll, (int, float)) else None
        ax.legend(fontsize=8, loc="upper left", title=label, title_fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------------
# everything
# --------------------------------------------------------------------------------------------------

FIGURE_NAMES = (
    "training_curves",
    "validation",
    "roc_curves",
    "calibration",
    "gates",
    "grad_diagnostics",
    "health",
)


def all_figures(
    history: pd.DataFrame | None,
    metrics: Mapping[str, Any] | None,
    predictions: pd.DataFrame | None,
) -> dict[str, Figure]:
    """All report figures, keyed by :data:`FIGURE_NAMES` (always the same keys, in that order).

    A figure whose inputs are missing carries a note; a figure that fails to draw is replaced by
    a note with the error (and the error is logged), so one bad input never loses the report.
    """
    builders: dict[str, Callable[[], Figure]] = {
        "training_curves": lambda: training_curves(history),
        "validation": lambda: validation_auc(history),
        "roc_curves": lambda: roc_curves(predictions),
        "calibration": lambda: calibration_plot(metrics),
        "gates": lambda: gate_plots(history),
        "grad_diagnostics": lambda: grad_diagnostics(history),
        "health": lambda: health_plots(history),
    }
    figures: dict[str, Figure] = {}
    for name, build in builders.items():
        try:
            figures[name] = build()
        except Exception as exc:  # a broken plot must not lose the report
            log.exception("figure %s failed", name)
            figures[name] = _note_figure(name, f"figure failed: {type(exc).__name__}: {exc}")
    return figures
