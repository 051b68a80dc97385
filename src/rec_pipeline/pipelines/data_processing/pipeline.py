"""Raw files -> parsed shards -> vocabularies -> encoded splits -> sampled training rows ->
metadata and the data-quality report."""

from kedro.pipeline import Pipeline, node

from rec_pipeline.hooks import WORKER_POOL_TAG

from .nodes import (
    build_data_quality_report,
    build_vocabularies,
    describe_dataset,
    encode_features,
    extract_planted_truth,
    parse_raw,
    sample_training_negatives,
)

PARSED = [f"parsed_{s}_{t}" for s in ("train", "test") for t in ("samples", "commons")]


def create_sampling_pipeline(**kwargs) -> Pipeline:
    """Negative sampling and what depends on it: rerunnable without parsing or encoding."""
    return Pipeline(
        [
            node(
                sample_training_negatives,
                inputs=[
                    "encoded_train_all",
                    "encode_report",
                    "shard_staging",
                    "params:data",
                ],
                outputs=["encoded_train", "sampling_report"],
                name="sample_training_negatives",
                tags=[WORKER_POOL_TAG],
            ),
            node(
                describe_dataset,
                inputs=[
                    "vocabularies",
                    "encode_report",
                    "sampling_report",
                    "params:data",
                    "params:vocab",
                ],
                outputs="metadata",
                name="describe_dataset",
            ),
            node(
                build_data_quality_report,
                inputs=["parse_report", "encode_report", "sampling_report"],
                outputs="data_quality",
                name="build_data_quality_report",
            ),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    encoding = Pipeline(
        [
            node(
                parse_raw,
                inputs=["raw_aliccp", "shard_staging", "params:data"],
                outputs=[
                    "parsed_train_samples",
                    "parsed_train_commons",
                    "parsed_test_samples",
                    "parsed_test_commons",
                    "quarantine",
                    "parse_report",
                ],
                name="parse_raw",
                tags=[WORKER_POOL_TAG],
            ),
            node(
                extract_planted_truth,
                inputs="raw_aliccp",
                outputs=["planted_truth_train", "planted_truth_test"],
                name="extract_planted_truth",
            ),
            node(
                build_vocabularies,
                inputs=[
                    "parsed_train_samples",
                    "parsed_train_commons",
                    "params:data",
                    "params:vocab",
                ],
                outputs="vocabularies",
                name="build_vocabularies",
                tags=[WORKER_POOL_TAG],
            ),
            node(
                encode_features,
                inputs=[*PARSED, "vocabularies", "shard_staging", "params:data", "params:vocab"],
                outputs=[
                    "encoded_train_all",
                    "encoded_valid",
                    "encoded_test",
                    "encoded_train_commons",
                    "encoded_test_commons",
                    "encode_report",
                ],
                name="encode_features",
                tags=[WORKER_POOL_TAG],
            ),
        ]
    )
    return encoding + create_sampling_pipeline()
