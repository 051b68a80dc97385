from kedro.pipeline import Pipeline, node

from .nodes import (
    build_data_quality_report,
    build_metadata,
    build_vocabularies,
    encode_features,
    parse_raw_files,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                parse_raw_files,
                inputs=["raw_aliccp", "parameters"],
                outputs=[
                    "parsed_train_samples",
                    "parsed_train_commons",
                    "parsed_test_samples",
                    "parsed_test_commons",
                    "quarantine",
                    "parse_report",
                ],
                name="parse_raw_files",
            ),
            node(
                build_vocabularies,
                inputs=["parsed_train_samples", "parsed_train_commons", "parameters"],
                outputs="vocabularies",
                name="build_vocabularies",
            ),
            node(
                encode_features,
                inputs=[
                    "parsed_train_samples",
                    "parsed_train_commons",
                    "parsed_test_samples",
                    "parsed_test_commons",
                    "vocabularies",
                    "parameters",
                ],
                outputs=[
                    "encoded_train",
                    "encoded_valid",
                    "encoded_test",
                    "encoded_train_commons",
                    "encoded_test_commons",
                    "encode_report",
                ],
                name="encode_features",
            ),
            node(
                build_metadata,
                inputs=["vocabularies", "encode_report", "parameters"],
                outputs="metadata",
                name="build_metadata",
            ),
            node(
                build_data_quality_report,
                inputs=["parse_report", "encode_report"],
                outputs="data_quality",
                name="build_data_quality_report",
            ),
        ]
    )
