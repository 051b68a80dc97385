from kedro.pipeline import Pipeline, node

from .nodes import train_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                train_model,
                inputs=[
                    "encoded_train",
                    "encoded_valid",
                    "encoded_train_commons",
                    "encoded_test",
                    "encoded_test_commons",
                    "metadata",
                    "raw_aliccp",
                    "training_state",
                    "parameters",
                ],
                outputs=[
                    "model_checkpoint",
                    "training_history",
                    "training_summary",
                    "auto_eval_predictions",
                ],
                name="train_model",
            )
        ]
    )
