"""Matplotlib figures of a training run and its evaluation.

Inputs are plain data:

* ``history``: long-format ``pandas.DataFrame`` with columns ``step``, ``kind``
  (``"train" | "valid" | "health" | "grad"``), ``name`` and ``value``, and optionally ``task``,
  ``expert`` and ``other_task`` (the diagnostics' structure: ``gate_weight`` per task and expert,
  ``grad_cos`` per task and other_task), by which the figures select their series;
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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from rec_pipeline.metrics.auc import roc_auc, roc_curve_points
from rec_pipeline.metrics.evaluate import TASKS

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

_HISTORY_COLUMNS = ("step", "kind", "name", "value")
_STRUCTURE_COLUMNS = ("task", "expert", "other_task")
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
    """History restricted to well-formed rows (numeric step and value, string kind and name),
    with the structure columns present (empty where the input has none)."""
    columns = (*_HISTORY_COLUMNS, *_STRUCTURE_COLUMNS)
    if (
        not isinstance(history, pd.DataFrame)
        or history.empty
        or any(c not in history.columns for c in _HISTORY_COLUMNS)
    ):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    h = history.copy()
    for c in _STRUCTURE_COLUMNS:
        if c not in h.columns:
            h[c] = None
    h = h.loc[:, list(columns)]
    h["step"] = pd.to_numeric(h["step"], errors="coerce")
    h["value"] = pd.to_numeric(h["value"], errors="coerce")
    h["expert"] = pd.to_numeric(h["expert"], errors="coerce")
    for c in ("kind", "name"):
        h[c] = h[c].astype(str)
    for c in ("task", "other_task"):
        labels = [None if pd.isna(v) else str(v) for v in h[c]]
        h[c] = pd.Series(labels, index=h.index, dtype=object)
    h = h[
        np.isfinite(h["step"].to_numpy(dtype=float)) & np.isfinite(h["value"].to_numpy(dtype=float))
    ]
    return h.sort_values("step", kind="stable")


#: A series' key beyond (kind, name): (task, expert, other_task), None where not set.
_Key = tuple[str | None, int | None, str | None]


class _History:
    """Fast access to the series of a cleaned long-format history, by kind, name and structure."""

    def __init__(self, history: pd.DataFrame | None) -> None:
        h = _clean_history(history)
        self._series: dict[tuple[str, str, _Key], tuple[np.ndarray, np.ndarray]] = {}
        keys = ["kind", "name", *_STRUCTURE_COLUMNS]
        for (kind, name, task, expert, other), g in h.groupby(keys, sort=False, dropna=False):
            key = (
                None if pd.isna(task) else task,
                None if pd.isna(expert) else int(expert),
                None if pd.isna(other) else other,
            )
            self._series[(kind, name, key)] = (
                g["step"].to_numpy(dtype=float),
                g["value"].to_numpy(dtype=float),
            )

    def names(self, kind: str) -> list[str]:
        return sorted({n for k, n, _ in self._series if k == kind})

    def get(
        self,
        kind: str,
        name: str,
        task: str | None = None,
        expert: int | None = None,
        other_task: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        return self._series.get((kind, name, (task, expert, other_task)))

    def keys(self, kind: str, name: str) -> list[_Key]:
        """The (task, expert, other_task) keys of ``name``'s series, sorted."""
        found = [key for k, n, key in self._series if k == kind and n == name]
        return sorted(
            found, key=lambda key: (key[0] or "", -1 if key[1] is None else key[1], key[2] or "")
        )

    def tasks(self, kind: str, name: str) -> list[str]:
        return sorted({key[0] for key in self.keys(kind, name) if key[0] is not None})

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


#: One line of a panel: (label, steps, values).
_Series = tuple[str, np.ndarray, np.ndarray]


def _named(
    hist: _History, kind: str, names: list[str], label: Callable[[str], str] = str
) -> list[_Series]:
    """The plain (unstructured) series of ``names``, labelled by ``label(name)``."""
    found = ((name, hist.get(kind, name)) for name in names)
    return [(label(name), s[0], s[1]) for name, s in found if s is not None]


def _lines_panel(
    ax: Axes,
    series: list[_Series],
    title: str,
    ylabel: str = "",
    smooth: bool = False,
    log_y: bool | None = None,
) -> None:
    arrays = []
    for label, steps, values in series:
        _plot_series(ax, steps, values, label, smooth=smooth)
        arrays.append(values)
    ax.set_title(title)
    ax.set_xlabel("step")
    if ylabel:
        ax.set_ylabel(ylabel)
    if log_y is None:
        _maybe_log_y(ax, arrays)
    elif log_y and arrays and all(np.all(a > 0) for a in arrays):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if len(series) > 1 or (series and series[0][0] != title):
        ax.legend(fontsize=8, loc="best")


def _per_task(hist: _History, kind: str, name: str, label: str = "{task}") -> list[_Series]:
    """The series of ``name`` per task (and other_task), labelled by ``label``."""
    out = []
    for task, expert, other in hist.keys(kind, name):
        s = hist.get(kind, name, task, expert, other)
        if s is not None and task is not None:
            out.append((label.format(task=task, other=other), s[0], s[1]))
    return out


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
        label = opts.pop("label", str)
        _lines_panel(ax, _named(h, "train", names, label), title, **opts)
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
        _lines_panel(ax, _named(h, "valid", primary), "auc_primary", log_y=False)
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
        series = _named(h, "valid", aucs, _strip("auc_"))
        _lines_panel(next(it), series, "AUC per task", log_y=False)
    if losses:
        _lines_panel(next(it), _named(h, "valid", losses, _strip("logloss_")), "log loss")
    if gaps:
        ax = next(it)
        series = _named(h, "valid", gaps, _strip("oracle_gap_"))
        _lines_panel(ax, series, "oracle AUC gap", log_y=False)
        ax.axhline(0.0, color="0.5", linewidth=0.8)
    return fig


def _gate_weight_panel(ax: Axes, h: _History, task: str) -> int:
    """Mean gate weight of each expert of ``task`` over steps; returns the number of experts."""
    experts = sorted(
        e for t, e, _ in h.keys("health", "gate_weight") if t == task and e is not None
    )
    series = []
    for e in experts:
        steps, values = h.get("health", "gate_weight", task, e)  # type: ignore[misc]
        series.append((f"e{e}", steps, values))
    _lines_panel(ax, series, f"gate weights: {task}", ylabel="mean gate weight", log_y=False)
    ax.axhline(1.0 / len(experts), color="0.5", linestyle="--", linewidth=0.8)
    ax.set_ylim(bottom=0.0)
    return len(experts)


def gate_plots(history: pd.DataFrame | None) -> Figure:
    """MMoE gate weight per task and expert over steps, gate entropy and dead experts."""
    h = _History(history)
    tasks = h.tasks("health", "gate_weight")
    entropies = _per_task(h, "health", "gate_entropy")
    dead = _per_task(h, "health", "dead_experts")
    n_panels = len(tasks) + bool(entropies) + bool(dead)
    if n_panels == 0:
        return _note_figure("MMoE gates", "no gate statistics in the history")
    fig, axes = _new_figure(n_panels, 2, "MMoE gates")
    it = iter(axes)
    n_experts = max((_gate_weight_panel(next(it), h, task) for task in tasks), default=0)
    if entropies:
        ax = next(it)
        _lines_panel(ax, entropies, "gate entropy", log_y=False)
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
        _lines_panel(next(it), dead, "dead experts", log_y=False)
    return fig


def grad_diagnostics(history: pd.DataFrame | None) -> Figure:
    """Per-task gradient norms on the shared parameters and the cosine between task gradients."""
    h = _History(history)
    norms = _per_task(h, "grad", "grad_norm")
    coss = _per_task(h, "grad", "grad_cos", "{task} vs {other}")
    panels = [p for p in (norms, coss) if p]
    if not panels:
        return _note_figure("Gradient diagnostics", "no gradient diagnostics in the history")
    fig, axes = _new_figure(len(panels), 2, "Gradient diagnostics")
    it = iter(axes)
    if norms:
        _lines_panel(next(it), norms, "gradient norm", log_y=True)
    if coss:
        ax = next(it)
        _lines_panel(ax, coss, "gradient cosine", smooth=True, log_y=False)
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_ylim(-1.05, 1.05)
    return fig


def _logit_panel(ax: Axes, h: _History, tasks: list[str]) -> None:
    """Logit mean per task with a ± std band (a std alone is drawn dotted)."""
    for task in tasks:
        mean = h.get("health", "logit_mean", task)
        std = h.get("health", "logit_std", task)
        if mean is not None:
            (line,) = ax.plot(mean[0], mean[1], label=task)
            if std is not None and np.array_equal(std[0], mean[0]):
                ax.fill_between(
                    mean[0], mean[1] - std[1], mean[1] + std[1], alpha=0.2, color=line.get_color()
                )
        elif std is not None:
            ax.plot(std[0], std[1], linestyle=":", label=f"{task} std")
    ax.set_title("logits (mean ± std)")
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _rates_panel(ax: Axes, probs: list[_Series], rates: list[_Series]) -> None:
    """Mean predicted probability (solid) against the batch's positive rate (dashed) per task."""
    for label, steps, values in probs:
        ax.plot(steps, values, label=f"pred {label}")
    for label, steps, values in rates:
        ax.plot(steps, values, linestyle="--", label=f"rate {label}")
    _maybe_log_y(ax, [values for _, _, values in probs + rates])
    ax.set_title("mean prediction vs positive rate")
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def health_plots(history: pd.DataFrame | None) -> Figure:
    """Logit mean ± std per task, mean predicted probability and positive rates."""
    h = _History(history)
    logit_tasks = sorted({*h.tasks("health", "logit_mean"), *h.tasks("health", "logit_std")})
    probs = _per_task(h, "health", "prob_mean")
    rates = _per_task(h, "health", "pos_rate")
    n_panels = bool(logit_tasks) + bool(probs or rates)
    if n_panels == 0:
        return _note_figure("Model health", "no health statistics in the history")
    fig, axes = _new_figure(n_panels, 2, "Model health")
    it = iter(axes)
    if logit_tasks:
        _logit_panel(next(it), h, logit_tasks)
    if probs or rates:
        _rates_panel(next(it), probs, rates)
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
