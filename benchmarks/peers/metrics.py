"""Test AUCs of one set of predictions (docs/model.md, Metrics), and the side-by-side markdown table.

* CTR: ``p_ctr`` vs click over all rows;
* CVR: ``p_cvr`` vs conversion over the clicked rows only;
* CTCVR: ``p_ctr * p_cvr`` vs conversion over all rows;
* primary: ``ctcvr + 0.2 * ctr + 0.2 * cvr``.

AUCs come from ``sklearn.metrics.roc_auc_score`` (ties count one half); a task with one class
present gives ``None``.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

TASKS = ("ctr", "cvr", "ctcvr")
COLUMNS = ("ctr", "cvr", "ctcvr", "primary")
PRIMARY_WEIGHTS = {"ctcvr": 1.0, "ctr": 0.2, "cvr": 0.2}


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    labels = np.asarray(labels)
    if len(labels) == 0 or labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def task_aucs(click, conversion, p_ctr, p_cvr) -> dict[str, float | None]:
    """{'ctr', 'cvr', 'ctcvr', 'primary'} AUCs of the predictions (module docstring)."""
    click = np.asarray(click).astype(np.int64)
    conversion = np.asarray(conversion).astype(np.int64)
    p_ctr = np.asarray(p_ctr, dtype=np.float64)
    p_cvr = np.asarray(p_cvr, dtype=np.float64)
    clicked = click == 1
    out = {
        "ctr": auc(click, p_ctr),
        "cvr": auc(conversion[clicked], p_cvr[clicked]),
        "ctcvr": auc(conversion, p_ctr * p_cvr),
    }
    parts = [out[t] for t in PRIMARY_WEIGHTS]
    out["primary"] = (
        None if any(v is None for v in parts) else sum(PRIMARY_WEIGHTS[t] * out[t] for t in TASKS)
    )
    return out


def summarise(runs: list[dict]) -> dict:
    """Mean and sample standard deviation of each AUC column and of the training time."""
    out: dict = {"runs": len(runs)}
    for col in (*COLUMNS, "train_s"):
        vals = [r[col] for r in runs if r.get(col) is not None]
        if not vals:
            out[col] = out[f"{col}_std"] = None
            continue
        out[col] = float(np.mean(vals))
        out[f"{col}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    return out


def _cell(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    """One line per model: runs, mean training seconds, and mean ± std of every AUC column."""
    lines = [
        "| model | runs | train s | CTR AUC | CVR AUC (clicked) | CTCVR AUC | primary |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [_cell(r.get(c), r.get(f"{c}_std")) for c in COLUMNS]
        t = r.get("train_s")
        secs = "" if t is None else (f"{t:.1f}" if t < 10 else f"{t:.0f}")
        lines.append(f"| {r['model']} | {r.get('runs', '')} | {secs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
