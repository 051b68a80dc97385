"""Project pipelines, registered by name (`kedro registry list`)."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from rec_pipeline.pipelines import (
    data_generation,
    data_processing,
    evaluation,
    reporting,
    training,
)


def register_pipelines() -> dict[str, Pipeline]:
    pipes = {
        "data_generation": data_generation.create_pipeline(),
        "data_processing": data_processing.create_pipeline(),
        "sampling": data_processing.create_sampling_pipeline(),
        "training": training.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
        "reporting": reporting.create_pipeline(),
    }
    pipes["data"] = pipes["data_generation"] + pipes["data_processing"]
    pipes["__default__"] = (
        pipes["data"] + pipes["training"] + pipes["evaluation"] + pipes["reporting"]
    )
    return pipes
