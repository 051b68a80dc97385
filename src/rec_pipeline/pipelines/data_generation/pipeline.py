from kedro.pipeline import Pipeline, node

from .nodes import prepare_raw_data


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([node(prepare_raw_data, "parameters", "raw_aliccp", name="prepare_raw_data")])
