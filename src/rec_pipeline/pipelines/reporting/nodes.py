"""Reporting node: figures and a self-contained HTML report of the latest run."""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from rec_pipeline.data.metadata import DatasetMetadata
from rec_pipeline.report.html import render_report
from rec_pipeline.report.plots import all_figures


def previous_metrics(current: dict, versions: list[dict]) -> dict | None:
    """The newest saved evaluation before ``current`` (versions are oldest first)."""
    earlier = [v["data"] for v in versions if v["data"] != current]
    return earlier[-1] if earlier else None


def data_summary(metadata: DatasetMetadata, data_quality: dict) -> dict:
    return {
        "splits": metadata.splits,
        "vocabulary_sizes": metadata.vocab_sizes,
        "negative_keep_prob_train": metadata.neg_keep_prob_train,
        "data_quality": data_quality,
    }


def training_overview(summary: dict) -> dict:
    """The scalar facts of a training run (the full summary is its own dataset)."""
    keys = (
        "device",
        "amp_dtype",
        "steps",
        "epochs_equivalent",
        "train_rows",
        "seconds",
        "validation_seconds",
        "samples_per_s",
        "best_step",
    )
    out = {k: summary.get(k) for k in keys}
    if "peak_gpu_memory_bytes" in summary:
        out["peak_gpu_memory_mib"] = summary["peak_gpu_memory_bytes"] / 2**20
    out["dense_parameters"] = summary.get("parameter_counts", {}).get("dense_total")
    out["all_parameters"] = summary.get("parameter_counts", {}).get("total")
    return out


def build_report(
    training_history: pd.DataFrame,
    training_summary: dict,
    evaluation_metrics: dict,
    evaluation_metrics_versions: list[dict],
    predictions: pd.DataFrame,
    metadata: dict,
    data_quality: dict,
    parameters: dict[str, Any],
) -> tuple[str, dict[str, Figure]]:
    figures = all_figures(training_history, evaluation_metrics, predictions)
    html = render_report(
        figures,
        params=parameters,
        data_summary={
            "training": training_overview(training_summary),
            **data_summary(DatasetMetadata.from_dict(metadata), data_quality),
        },
        metrics=evaluation_metrics,
        previous_metrics=previous_metrics(evaluation_metrics, evaluation_metrics_versions),
        title=f"rec_pipeline report: {parameters.get('experiment', {}).get('name', 'run')}",
    )
    # The figures dataset writes one file per key: name them as the PNG files they are.
    return html, {f"{name}.png": fig for name, fig in figures.items()}
