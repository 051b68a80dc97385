"""Self-contained HTML report of a trained and evaluated model.

The page opens offline: inline CSS, no scripts, no external fonts, figures embedded as base64 PNG
data URIs. Every piece of text coming from the inputs is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from rec_pipeline.metrics.evaluate import TASKS, flat_metrics

__all__ = ["figure_to_data_uri", "render_report", "render_value"]

_TASK_LABELS = {
    "ctr": "CTR (all rows)",
    "cvr": "CVR (clicked rows)",
    "ctcvr": "CTCVR (all rows)",
}
_MAX_LIST_ITEMS = 50

_CSS = """
:root { --fg: #1d2430; --muted: #5b6472; --line: #d9dee5; --bg: #ffffff; --soft: #f5f7fa;
        --accent: #2f6fdb; --good: #1a7f37; --bad: #c62828; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--soft); color: var(--fg);
       font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; background: var(--bg);
       min-height: 100vh; box-shadow: 0 0 0 1px var(--line); }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 8px; }
.subtitle { color: var(--muted); margin: 0 0 16px; }
nav { margin: 8px 0 0; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
nav a:hover { text-decoration: underline; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0 8px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; min-width: 150px;
        background: var(--soft); }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.na { color: var(--muted); font-style: italic; }
.good { color: var(--good); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
.muted { color: var(--muted); }
figure { margin: 18px 0 26px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--accent); font-weight: 600; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 12px;
      overflow-x: auto; font: 12px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.nested table { margin: 0; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


# --------------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------------


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _is_scalar(v: Any) -> bool:
    v = _scalar(v)
    return v is None or isinstance(v, (str, bytes, bool, int, float))


def _fmt(v: Any, digits: int = 6) -> str:
    """Escaped display text of a scalar."""
    v = _scalar(v)
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v == int(v) and abs(v) < 1e15 and digits >= 6:
            return f"{int(v):,}"
        return f"{v:.{digits}g}"
    if isinstance(v, bytes):
        return _e(f"<{len(v)} bytes>")
    return _e(v)


def _td(v: Any, digits: int = 6) -> str:
    v = _scalar(v)
    if v is None:
        return '<td class="na">—</td>'
    cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
    return f"<td{cls}>{_fmt(v, digits)}</td>"


def render_value(value: Any) -> str:
    """Generic HTML for nested dicts / lists / scalars (tables for mappings and records)."""
    value = _scalar(value)
    if _is_scalar(value):
        return _fmt(value)
    if isinstance(value, Mapping):
        if not value:
            return '<span class="muted">empty</span>'
        items = list(value.items())
        if all(
            isinstance(v, Mapping) and v and all(_is_scalar(x) for x in v.values())
            for _, v in items
        ):
            columns: list[str] = []
            for _, v in items:
                columns += [str(c) for c in v if str(c) not in columns]
            head = "".join(f"<th>{_e(c)}</th>" for c in ["", *columns])
            rows = []
            for k, v in items:
                sv = {str(c): x for c, x in v.items()}
                cells = "".join(_td(sv.get(c)) for c in columns)
                rows.append(f"<tr><th>{_e(k)}</th>{cells}</tr>")
            return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        rows = []
        for k, v in items:
            cell = _td(v) if _is_scalar(v) else f'<td class="nested">{render_value(v)}</td>'
            rows.append(f"<tr><th>{_e(k)}</th>{cell}</tr>")
        return f"<table><tbody>{''.join(rows)}</tbody></table>"
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (Sequence, set, frozenset)):
        seq = list(value)
        if not seq:
            return '<span class="muted">empty</span>'
        if all(_is_scalar(x) for x in seq):
            shown = ", ".join(_fmt(x) for x in seq[:_MAX_LIST_ITEMS])
            more = len(seq) - _MAX_LIST_ITEMS
            return shown + (f' <span class="muted">… ({more:,} more)</span>' if more > 0 else "")
        if all(isinstance(x, Mapping) and all(_is_scalar(v) for v in x.values()) for x in seq):
            columns = []
            for x in seq:
                columns += [str(c) for c in x if str(c) not in columns]
            head = "".join(f"<th>{_e(c)}</th>" for c in columns)
            rows = []
            for x in seq:
                sx = {str(c): v for c, v in x.items()}
                rows.append("<tr>" + "".join(_td(sx.get(c)) for c in columns) + "</tr>")
            return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        return "<ol>" + "".join(f"<li>{render_value(x)}</li>" for x in seq) + "</ol>"
    return _e(repr(value))


def figure_to_data_uri(fig: Figure | bytes, dpi: int = 110) -> str:
    """``data:image/png;base64,...`` of a matplotlib figure (or of PNG bytes)."""
    if isinstance(fig, (bytes, bytearray)):
        png = bytes(fig)
    else:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
        png = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _params_text(params: Any) -> str:
    plain = json.loads(json.dumps(params, default=str))
    try:
        import yaml

        return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, default_flow_style=False)
    except Exception:  # PyYAML missing or refusing a value: JSON is always possible
        return json.dumps(plain, indent=2, ensure_ascii=False)


# --------------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------------


def _metric_cards(metrics: Mapping[str, Any]) -> str:
    tasks = metrics.get("tasks") or {}
    cards = []
    primary = metrics.get("auc_primary")
    reason = metrics.get("auc_primary_reason")
    value = _fmt(primary, 5) if primary is not None else f"— <small>{_e(reason or '')}</small>"
    cards.append(("auc_primary", value))
    for task in TASKS:
        block = tasks.get(task)
        if isinstance(block, Mapping):
            cards.append((f"AUC {task}", _fmt(block.get("auc"), 5)))
    if metrics.get("n_rows") is not None:
        cards.append(("rows", _fmt(metrics.get("n_rows"))))
    body = "".join(
        f'<div class="card"><div class="label">{_e(k)}</div><div class="value">{v}</div></div>'
        for k, v in cards
    )
    return f'<div class="cards">{body}</div>'


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    tasks = metrics.get("tasks")
    if not isinstance(tasks, Mapping) or not tasks:
        return '<p class="muted">No per-task metrics.</p>'
    blocks = {t: b for t, b in tasks.items() if isinstance(b, Mapping)}
    has_oracle = any(b.get("oracle_auc") is not None for b in blocks.values())
    has_uncorr = any(
        b.get("logloss_uncorrected") is not None
        and b.get("logloss_uncorrected") != b.get("logloss")
        for b in blocks.values()
    )
    cols: list[tuple[str, str, int]] = [("AUC", "auc", 5)]
    if has_oracle:
        cols += [("oracle AUC", "oracle_auc", 5), ("gap to oracle", "oracle_gap", 5)]
    cols += [("log loss", "logloss", 5)]
    if has_uncorr:
        cols += [("log loss (uncorrected)", "logloss_uncorrected", 5)]
    cols += [
        ("mean pred", "mean_pred", 4),
        ("rows", "n", 6),
        ("positives", "n_pos", 6),
        ("positive rate", "pos_rate", 4),
    ]
    head = "<th>task</th>" + "".join(f"<th>{_e(c[0])}</th>" for c in cols) + "<th>note</th>"
    rows = []
    for task, b in blocks.items():
        cells = "".join(_td(b.get(key), digits) for _, key, digits in cols)
        notes = [str(b[k]) for k in ("auc_reason", "oracle_auc_reason") if b.get(k)]
        rows.append(
            f"<tr><th>{_e(_TASK_LABELS.get(task, task))}</th>{cells}"
            f"<td>{_e('; '.join(notes))}</td></tr>"
        )
    out = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    extra = {
        k: metrics.get(k)
        for k in ("split", "checkpoint", "esmm", "keep_prob", "n_rows", "n_clicks", "n_conversions")
        if k in metrics
    }
    if extra:
        out += render_value(extra)
    for task, b in blocks.items():
        bins = b.get("calibration")
        if bins:
            out += (
                f"<details><summary>Calibration bins: {_e(_TASK_LABELS.get(task, task))}</summary>"
                f"{render_value(bins)}</details>"
            )
    return out


def _direction(key: str) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when neutral (counts, oracle AUC)."""
    if key.startswith(("oracle_gap", "logloss")):
        return -1
    if key.startswith("auc"):
        return 1
    return 0


def _order(key: str) -> tuple[int, str]:
    for i, prefix in enumerate(("auc_primary", "auc_", "oracle_gap", "oracle_auc", "logloss")):
        if key.startswith(prefix):
            return i, key
    return 9, key


def _comparison_table(metrics: Mapping[str, Any], previous: Mapping[str, Any]) -> str:
    cur = flat_metrics(metrics)
    prev = flat_metrics(previous)
    keys = sorted(set(cur) | set(prev), key=_order)
    if not keys:
        return '<p class="muted">Nothing to compare.</p>'
    rows = []
    for key in keys:
        c, p = cur.get(key), prev.get(key)
        if c is not None and p is not None:
            delta = c - p
            sign = _direction(key)
            cls = "num"
            if sign and delta != 0:
                cls += " good" if delta * sign > 0 else " bad"
            dcell = f'<td class="{cls}">{delta:+.5g}</td>'
        else:
            dcell = '<td class="na">—</td>'
        rows.append(f"<tr><th>{_e(key)}</th>{_td(p)}{_td(c)}{dcell}</tr>")
    head = (
        "<tr><th>metric</th><th>previous</th><th>current</th><th>Δ (current − previous)</th></tr>"
    )
    about = {
        label: {k: d.get(k) for k in ("split", "checkpoint") if d.get(k) is not None}
        for label, d in (("previous", previous), ("current", metrics))
    }
    about = {k: v for k, v in about.items() if v}
    intro = render_value(about) if about else ""
    return (
        f"{intro}<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
        '<p class="muted">Green: better (higher AUC, lower log loss or oracle gap); red: worse.</p>'
    )


def _figures_section(figures: Mapping[str, Any]) -> str:
    if not figures:
        return '<p class="muted">No figures.</p>'
    parts = []
    for name, fig in figures.items():
        uri = figure_to_data_uri(fig)
        caption = str(name).replace("_", " ")
        parts.append(
            f'<figure id="fig-{_e(name)}"><img src="{uri}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return "".join(parts)


# --------------------------------------------------------------------------------------------------
# page
# --------------------------------------------------------------------------------------------------


def _sections(
    figures: Mapping[str, Figure | bytes] | None,
    params: Mapping[str, Any] | None,
    data_summary: Mapping[str, Any] | None,
    metrics: Mapping[str, Any],
    previous_metrics: Mapping[str, Any] | None,
) -> list[tuple[str, str, str]]:
    """The page's sections in order, as (anchor id, heading, HTML content)."""
    sections = [("metrics", "Metrics", _metric_cards(metrics) + _metrics_table(metrics))]
    if previous_metrics:
        comparison = _comparison_table(metrics, previous_metrics)
        sections.append(("comparison", "Comparison with the previous run", comparison))
    sections.append(("figures", "Figures", _figures_section(figures or {})))
    data_html = (
        render_value(data_summary) if data_summary else '<p class="muted">No data summary.</p>'
    )
    sections.append(("data", "Data summary", data_html))
    params_html = (
        f"<details><summary>Show parameters</summary><pre>{_e(_params_text(params))}</pre></details>"
        if params
        else '<p class="muted">No parameters.</p>'
    )
    sections.append(("parameters", "Parameters", params_html))
    return sections


def render_report(
    figures: Mapping[str, Figure | bytes],
    params: Mapping[str, Any] | None,
    data_summary: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None,
    previous_metrics: Mapping[str, Any] | None,
    title: str,
) -> str:
    """A complete, self-contained HTML page.

    Sections: metrics (per-task table with AUC, oracle AUC and gap when present, log loss,
    counts; calibration bins collapsible), comparison with ``previous_metrics`` (only when given:
    per-metric previous / current / delta), data summary (nested dicts rendered as tables), the
    figures (base64 PNG) and the parameters (YAML in a collapsible block). The figures are not
    closed: the caller owns them.
    """
    metrics = metrics or {}
    sections = _sections(figures, params, data_summary, metrics, previous_metrics)
    subtitle_bits = [
        f"{label}: {_e(metrics[k])}"
        for k, label in (("split", "split"), ("checkpoint", "checkpoint"))
        if metrics.get(k) is not None
    ]
    subtitle = f'<p class="subtitle">{" · ".join(subtitle_bits)}</p>' if subtitle_bits else ""
    nav = "".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{_e(name)}</h2>{content}</section>'
        for sid, name, content in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<header><h1>{_e(title)}</h1>{subtitle}<nav>{nav}</nav></header>\n"
        f"{body}\n"
        "<footer>rec_pipeline report · self-contained page (no external resources)</footer>\n"
        "</main>\n</body>\n</html>\n"
    )
