"""The raw folder: synthetic planted-truth data written, or the user's own files checked."""

from kedro.pipeline import Pipeline, node

from rec_pipeline.hooks import WORKER_POOL_TAG

from .nodes import prepare_raw_data


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                prepare_raw_data,
                inputs=["params:data.source", "params:synthetic"],
                outputs="raw_aliccp",
                name="prepare_raw_data",
                tags=[WORKER_POOL_TAG],
            )
        ]
    )
