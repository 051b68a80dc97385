"""Data-processing nodes: parse, count vocabularies, encode, sample negatives, describe.

Each node is one library call on its ``params:`` sections. The parse, encode and sampling nodes
are generators: each yields one chunk per output and Kedro saves it, so memory stays at one chunk
whatever the size of the input. The parse and encode nodes' worker processes write their shards
themselves, into ``shard_staging``; the chunk they yield is then the written file
(a ``PartFile``), which the shard dataset moves into its folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from rec_pipeline.config import load_section
from rec_pipeline.data.counting import count_training_shards
from rec_pipeline.data.encode import encode_splits
from rec_pipeline.data.metadata import describe
from rec_pipeline.data.parsing import parse_raw_files
from rec_pipeline.data.quality import data_quality_report
from rec_pipeline.data.raw import RawFiles
from rec_pipeline.data.sampling import sample_negatives, training_keep_prob
from rec_pipeline.data.shards import ShardSet
from rec_pipeline.data.vocab import Vocabulary, vocabulary_frame


def parse_raw(raw_aliccp: RawFiles, shard_staging: Path, data: dict[str, Any]) -> Iterator[tuple]:
    """The four raw files as parsed shards, the quarantined lines and the parse report."""
    d = load_section("data", data)
    f, chunk = d.fields, d.chunk_mb << 20
    yield from parse_raw_files(
        raw_aliccp, f.skeleton, f.common, chunk, shard_staging, d.workers, d.tokenizer
    )


def extract_planted_truth(raw_aliccp: RawFiles) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The generator's true probabilities per sample (no rows for real data), so that training
    and evaluation never read the raw folder."""
    return raw_aliccp.planted_truth("train"), raw_aliccp.planted_truth("test")


def build_vocabularies(
    parsed_train_samples: ShardSet,
    parsed_train_commons: ShardSet,
    data: dict[str, Any],
    vocab: dict[str, Any],
) -> pd.DataFrame:
    """Per-field vocabularies from the training split only (validation groups excluded)."""
    d, v = load_section("data", data), load_section("vocab", vocab)
    counter = count_training_shards(
        parsed_train_samples,
        parsed_train_commons,
        d.fields.skeleton,
        d.fields.common,
        valid_fraction=d.valid_fraction,
        seed=d.seed,
        workers=d.workers,
    )
    return vocabulary_frame(
        counter,
        d.fields.names(),
        min_count=v.min_count,
        max_size=v.max_size,
        hash_buckets=v.hash_buckets,
    )


def encode_features(
    parsed_train_samples: ShardSet,
    parsed_train_commons: ShardSet,
    parsed_test_samples: ShardSet,
    parsed_test_commons: ShardSet,
    vocabularies: pd.DataFrame,
    shard_staging: Path,
    data: dict[str, Any],
    vocab: dict[str, Any],
) -> Iterator[tuple]:
    """Split train into train/valid by common record and encode ids (no sampling yet).

    Yields (train_all, valid, test, train_commons, test_commons, report) chunk by chunk.
    """
    d, v = load_section("data", data), load_section("vocab", vocab)
    parsed = {
        "train_samples": parsed_train_samples,
        "train_commons": parsed_train_commons,
        "test_samples": parsed_test_samples,
        "test_commons": parsed_test_commons,
    }
    yield from encode_splits(
        parsed,
        d.fields.skeleton,
        d.fields.common,
        Vocabulary(vocabularies, v.hash_buckets),
        valid_fraction=d.valid_fraction,
        seed=d.seed,
        staging=shard_staging,
        workers=d.workers,
    )


def sample_training_negatives(
    encoded_train_all: ShardSet, encode_report: dict, shard_staging: Path, data: dict[str, Any]
) -> Iterator[tuple]:
    """Keep every click and each training negative with ``data.neg_keep_prob_train`` (raised on
    a small log by ``data.neg_keep_at_least``), shards in ``data.workers`` processes that write
    their own part files.

    Rerun alone (``kedro run --pipeline=sampling --params data.neg_keep_prob_train=0.3``) to
    change the rate without parsing or encoding again.
    """
    d = load_section("data", data)
    keep = training_keep_prob(d.neg_keep_prob_train, d.neg_keep_at_least, encode_report)
    yield from sample_negatives(encoded_train_all, keep, staging=shard_staging, workers=d.workers)


def describe_dataset(
    vocabularies: pd.DataFrame,
    encode_report: dict,
    sampling_report: dict,
    data: dict[str, Any],
    vocab: dict[str, Any],
) -> dict:
    """metadata.json: everything the model and evaluation need to know about the data."""
    d, v = load_section("data", data), load_section("vocab", vocab)
    return describe(vocabularies, encode_report, sampling_report, d, v).to_dict()


def build_data_quality_report(
    parse_report: dict, encode_report: dict, sampling_report: dict
) -> dict:
    """Every line and row accounted for: parsed, rejected (by reason), unjoinable, sampled."""
    return data_quality_report(parse_report, encode_report, sampling_report)
