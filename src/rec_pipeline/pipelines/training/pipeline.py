"""Training on the encoded splits, then the automatic evaluation of the trained weights."""

from kedro.pipeline import Pipeline, node

from .nodes import auto_evaluate, train_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                train_model,
                inputs=[
                    "encoded_train",
                    "encoded_valid",
                    "encoded_train_commons",
                    "metadata",
                    "training_state",
                    "parameters",
                ],
                outputs=["model_checkpoint", "training_history", "training_summary"],
                name="train_model",
            ),
            node(
                auto_evaluate,
                inputs=[
                    "model_checkpoint",
                    "encoded_valid",
                    "encoded_test",
                    "encoded_train_commons",
                    "encoded_test_commons",
                    "planted_truth_train",
                    "planted_truth_test",
                    "params:runtime",
                    "params:evaluation",
                ],
                outputs=["auto_eval_predictions", "auto_eval_metrics"],
                name="auto_evaluate",
            ),
        ]
    )
