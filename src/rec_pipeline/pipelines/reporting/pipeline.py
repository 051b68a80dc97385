"""Figures and a self-contained HTML report of the latest run."""

from kedro.pipeline import Pipeline, node

from .nodes import build_report


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                build_report,
                inputs=[
                    "training_history",
                    "training_summary",
                    "evaluation_metrics",
                    "evaluation_metrics_versions",
                    "predictions",
                    "metadata",
                    "data_quality",
                    "parameters",
                ],
                outputs=["report_html", "report_figures"],
                name="build_report",
            )
        ]
    )
