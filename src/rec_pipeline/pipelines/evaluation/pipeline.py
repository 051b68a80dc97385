"""A saved checkpoint evaluated on the split ``evaluation.split`` names."""

from kedro.pipeline import Pipeline, node

from .nodes import evaluate_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                evaluate_model,
                inputs=[
                    "model_checkpoint",
                    "encoded_train",
                    "encoded_valid",
                    "encoded_test",
                    "encoded_train_commons",
                    "encoded_test_commons",
                    "planted_truth_train",
                    "planted_truth_test",
                    "params:evaluation",
                ],
                outputs=["predictions", "evaluation_metrics"],
                name="evaluate_model",
            )
        ]
    )
