"""Data-processing nodes: parse, count vocabularies, split + sample + encode, describe.

The parse and encode nodes are generators: each yields one chunk per output and Kedro saves it,
so memory stays at one chunk whatever the size of the input.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

import pandas as pd

from rec_pipeline.config import load_config
from rec_pipeline.data.aliccp import (
    COMMON_KIND,
    QUARANTINE_SCHEMA,
    SKELETON_KIND,
    FileParser,
    rows_schema,
)
from rec_pipeline.data.encode import (
    COMMON_PREFIX,
    SKELETON_PREFIX,
    CommonIndex,
    SampleEncoding,
    SplitStats,
    count_training_ids,
    encode_commons,
    encode_samples,
    encoded_schema,
    split_train_rows,
)
from rec_pipeline.data.raw import RawFiles
from rec_pipeline.data.shards import ShardSet
from rec_pipeline.data.vocab import Vocabulary, vocabulary_frame

log = logging.getLogger(__name__)

PARSE_OUTPUTS = ("train_samples", "train_commons", "test_samples", "test_commons")


def parse_raw_files(raw_aliccp: RawFiles, parameters: dict[str, Any]) -> Iterator[tuple]:
    """Parse the four raw files chunk by chunk.

    Yields (train_samples, train_commons, test_samples, test_commons, quarantine, report) with
    an empty table for the outputs a chunk does not feed; the report is the running data-quality
    count, overwritten at each chunk so a crash still leaves the counts so far.
    """
    cfg = load_config(parameters)
    fields = cfg.data.fields
    chunk_bytes = cfg.data.chunk_mb << 20
    reports: dict[str, dict] = {}
    jobs = [
        ("train_commons", raw_aliccp.common("train"), COMMON_KIND, fields.common),
        ("train_samples", raw_aliccp.skeleton("train"), SKELETON_KIND, fields.skeleton),
        ("test_commons", raw_aliccp.common("test"), COMMON_KIND, fields.common),
        ("test_samples", raw_aliccp.skeleton("test"), SKELETON_KIND, fields.skeleton),
    ]
    empties = {name: rows_schema(kind, flds).empty_table() for name, _, kind, flds in jobs}
    for name, path, kind, flds in jobs:
        parser = FileParser(path, kind, flds, chunk_bytes=chunk_bytes)
        for rows, quarantine in parser.chunks():
            reports[name] = parser.report.to_dict()
            outs = [rows if o == name else empties[o] for o in PARSE_OUTPUTS]
            yield (*outs, quarantine, {"files": dict(reports)})
        reports[name] = parser.report.to_dict()
        log.info(
            "Parsed %s: %d valid rows, %d rejected %s, unknown fields %s",
            path,
            parser.report.valid_rows,
            parser.report.rejected,
            parser.report.counts,
            parser.report.unknown_fields,
        )
        parser.report.raise_if_no_rows()
    yield (
        *[empties[o] for o in PARSE_OUTPUTS],
        QUARANTINE_SCHEMA.empty_table(),
        {"files": reports},
    )


def build_vocabularies(
    parsed_train_samples: ShardSet, parsed_train_commons: ShardSet, parameters: dict[str, Any]
) -> pd.DataFrame:
    """Per-field vocabularies from the training split only (validation groups excluded)."""
    cfg = load_config(parameters)
    f = cfg.data.fields
    counter = count_training_ids(
        parsed_train_samples.iter_tables(),
        parsed_train_commons.iter_tables(),
        f.skeleton,
        f.common,
        valid_fraction=cfg.data.valid_fraction,
        seed=cfg.data.seed,
    )
    frame = vocabulary_frame(
        counter,
        f.names(),
        min_count=cfg.vocab.min_count,
        max_size=cfg.vocab.max_size,
        hash_buckets=cfg.vocab.hash_buckets,
    )
    log.info("Vocabularies: %d ids over %d fields.", len(frame), frame["field"].nunique())
    return frame


ENCODE_OUTPUTS = ("train", "valid", "test", "train_commons", "test_commons")


def encode_features(
    parsed_train_samples: ShardSet,
    parsed_train_commons: ShardSet,
    parsed_test_samples: ShardSet,
    parsed_test_commons: ShardSet,
    vocabularies: pd.DataFrame,
    parameters: dict[str, Any],
) -> Iterator[tuple]:
    """Split train into train/valid by common record, sample training negatives, encode ids.

    Yields (train, valid, test, train_commons, test_commons, report) chunk by chunk.
    """
    cfg = load_config(parameters)
    d, f = cfg.data, cfg.data.fields
    vocab = Vocabulary(vocabularies, cfg.vocab.hash_buckets)
    empty = {
        "train": encoded_schema(f.skeleton, "samples").empty_table(),
        "train_commons": encoded_schema(f.common, "commons").empty_table(),
    }
    empty["valid"] = empty["test"] = empty["train"]
    empty["test_commons"] = empty["train_commons"]
    stats = {s: SplitStats() for s in ("train", "valid", "test", "train_commons", "test_commons")}
    enc = {"train_file": SampleEncoding(), "test_file": SampleEncoding()}
    indexes = {"train": CommonIndex(), "test": CommonIndex()}

    def emit(**tables):
        outs = [tables.get(o, empty[o]) for o in ENCODE_OUTPUTS]
        return (*outs, _encode_report(stats, enc, indexes, d.neg_keep_prob_train))

    for split, commons in (("train", parsed_train_commons), ("test", parsed_test_commons)):
        for table in commons.iter_tables():
            indexes[split].extend(table.column("common_feature_index"))
            out = encode_commons(table, f.common, vocab, stats[f"{split}_commons"])
            yield emit(**{f"{split}_commons": out})
    for chunk, table in enumerate(parsed_train_samples.iter_tables()):
        keep_train, valid = split_train_rows(
            table,
            valid_fraction=d.valid_fraction,
            seed=d.seed,
            keep_prob=d.neg_keep_prob_train,
            chunk=chunk,
            enc=enc["train_file"],
        )
        kwargs = dict(skeleton=f.skeleton, vocab=vocab, commons=indexes["train"])
        tr = encode_samples(
            table, stats=stats["train"], enc=enc["train_file"], keep=keep_train, **kwargs
        )
        va = encode_samples(
            table, stats=stats["valid"], enc=enc["train_file"], keep=valid, **kwargs
        )
        yield emit(train=tr, valid=va)
    for table in parsed_test_samples.iter_tables():
        enc["test_file"].rows_in += table.num_rows
        te = encode_samples(
            table, f.skeleton, vocab, indexes["test"], stats["test"], enc["test_file"]
        )
        yield emit(test=te)
    log.info("Encoded: %s", {k: v.rows for k, v in stats.items()})


def _encode_report(stats, enc, indexes, keep_prob: float) -> dict:
    return {
        "splits": {k: v.as_dict() for k, v in stats.items()},
        "files": {
            k: {
                "sample_rows": e.rows_in,
                "missing_common_record": e.missing_common,
                "missing_common_examples": e.missing_examples,
                "negatives_seen": e.negatives_seen,
                "negatives_kept": e.negatives_kept,
            }
            for k, e in enc.items()
        },
        "duplicate_common_records": {k: v.duplicates for k, v in indexes.items()},
        "neg_keep_prob_train": keep_prob,
    }


def build_metadata(
    vocabularies: pd.DataFrame, encode_report: dict, parameters: dict[str, Any]
) -> dict:
    """metadata.json: everything the model and evaluation need to know about the data."""
    cfg = load_config(parameters)
    vocab = Vocabulary(vocabularies, cfg.vocab.hash_buckets)
    splits = encode_report["splits"]
    fields = []
    for side, prefix, raw_fields, table in (
        ("skeleton", SKELETON_PREFIX, cfg.data.fields.skeleton, "train"),
        ("common", COMMON_PREFIX, cfg.data.fields.common, "train_commons"),
    ):
        for raw in raw_fields:
            name = prefix + raw
            st = splits[table]["fields"].get(name, {})
            max_len = st.get("max_len", 0)
            weighted = raw in ("508", "509", "702", "853") or raw.endswith("_14")
            fields.append(
                {
                    "name": name,
                    "raw": raw,
                    "side": side,
                    "vocab_size": vocab.size(name),
                    "hashed": name in cfg.vocab.hash_buckets,
                    "kind": "weighted" if weighted else ("multi" if max_len > 1 else "single"),
                    "pooling": cfg.embedding.mode,
                    "embedding_dim": cfg.embedding_dim(name),
                    "max_len": max_len,
                    "mean_len": st.get("mean_len", 0.0),
                    "present_rate": st.get("present_rate", 0.0),
                    "oov_rate": st.get("oov_rate", 0.0),
                }
            )
    return {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "vocab_fingerprint": vocab.fingerprint,
        "fields": fields,
        "splits": {
            s: {k: v for k, v in splits[s].items() if k != "fields"}
            for s in ("train", "valid", "test")
        },
        "common_records": {s: splits[f"{s}_commons"]["rows"] for s in ("train", "test")},
        "neg_keep_prob_train": float(encode_report["neg_keep_prob_train"]),
        "valid_fraction": cfg.data.valid_fraction,
        "vocab": {
            "min_count": cfg.vocab.min_count,
            "max_size": cfg.vocab.max_size,
            "hash_buckets": cfg.vocab.hash_buckets,
        },
        "seed": cfg.data.seed,
    }


def build_data_quality_report(parse_report: dict, encode_report: dict) -> dict:
    """Every line and row accounted for: parsed, rejected (by reason), unjoinable, sampled."""
    files = parse_report["files"]
    totals: dict[str, int] = {}
    for rep in files.values():
        for reason, n in rep.get("counts", {}).items():
            totals[reason] = totals.get(reason, 0) + n
    return {
        "parse": files,
        "rejected_lines_by_reason": totals,
        "encode": encode_report["files"],
        "duplicate_common_records": encode_report["duplicate_common_records"],
        "rows": {s: v["rows"] for s, v in encode_report["splits"].items()},
    }
