"""What the model and evaluation need to know about the encoded data, as one typed contract.

:class:`DatasetMetadata` is written once by data processing (``metadata.json``), stored inside
every checkpoint, and read by the loaders, the model builder and evaluation; :class:`FieldSpec`
describes one feature field (TorchRec's ``EmbeddingBagConfig`` plays the same part there).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pandas as pd

from rec_pipeline.config import DataConfig, VocabConfig
from rec_pipeline.data.encode import COMMON_PREFIX, SKELETON_PREFIX
from rec_pipeline.data.vocab import Vocabulary

Side = Literal["skeleton", "common"]
# Fields whose values are intensities of a one-id cross feature or weighted behaviour lists.
WEIGHTED_FIELDS = frozenset({"508", "509", "702", "853"})


@dataclass(frozen=True)
class FieldSpec:
    """One feature field: its model name (``f0_205``), raw id, file side and table size.

    ``kind`` is descriptive (``single``, ``multi`` or ``weighted``); the statistics are those of
    the training split before negative sampling.
    """

    name: str
    raw: str
    side: Side
    vocab_size: int
    hashed: bool = False
    kind: str = "single"
    max_len: int = 0
    mean_len: float = 0.0
    present_rate: float = 0.0
    oov_rate: float = 0.0


@dataclass(frozen=True)
class DatasetMetadata:
    """Fields in model order (skeleton first), split sizes and rates, and how the data was made.

    ``splits[name]`` holds rows, clicks, conversions and the ctr/cvr/ctcvr rates of train
    (after negative sampling), valid and test; ``neg_keep_prob_train`` is the probability a
    training negative was kept with, which evaluation and calibration undo.
    """

    fields: tuple[FieldSpec, ...]
    splits: dict[str, dict[str, Any]]
    neg_keep_prob_train: float = 1.0
    valid_fraction: float = 0.1
    common_records: dict[str, int] = field(default_factory=dict)
    vocab: dict[str, Any] = field(default_factory=dict)
    vocab_fingerprint: str | None = None
    seed: int | None = None
    created_at: str | None = None

    # Views --------------------------------------------------------------------------------

    def names(self, side: Side | None = None) -> list[str]:
        """Model field names in model order, of one side or of both."""
        return [f.name for f in self.fields if side is None or f.side == side]

    def raw_ids(self, side: Side) -> list[str]:
        """Raw field ids of one side, in model order (the encoded files' column suffixes)."""
        return [f.raw for f in self.fields if f.side == side]

    @property
    def vocab_sizes(self) -> dict[str, int]:
        return {f.name: f.vocab_size for f in self.fields}

    def rate(self, split: str, task: str) -> float | None:
        """Observed positive rate of ``task`` (ctr, cvr, ctcvr) on ``split``, None if undefined."""
        return self.splits.get(split, {}).get(task)

    # Serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fields"] = [asdict(f) for f in self.fields]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetMetadata:
        """Read ``metadata.json`` (older files' extra per-field keys are ignored)."""
        known = set(FieldSpec.__dataclass_fields__)
        fields = tuple(
            FieldSpec(**{k: v for k, v in f.items() if k in known}) for f in data["fields"]
        )
        top = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "fields"}
        return cls(fields=fields, **top)

    @classmethod
    def coerce(cls, data: DatasetMetadata | Mapping[str, Any]) -> DatasetMetadata:
        return data if isinstance(data, cls) else cls.from_dict(data)


def _field_specs(
    vocab: Vocabulary,
    skeleton: Sequence[str],
    common: Sequence[str],
    field_stats: Mapping[str, Mapping[str, Any]],
) -> tuple[FieldSpec, ...]:
    specs = []
    for side, prefix, raws in (
        ("skeleton", SKELETON_PREFIX, skeleton),
        ("common", COMMON_PREFIX, common),
    ):
        for raw in raws:
            name = prefix + raw
            st = field_stats.get(name, {})
            max_len = int(st.get("max_len", 0))
            weighted = raw in WEIGHTED_FIELDS or raw.endswith("_14")
            specs.append(
                FieldSpec(
                    name=name,
                    raw=raw,
                    side=side,
                    vocab_size=vocab.size(name),
                    hashed=name in vocab.hash_buckets,
                    kind="weighted" if weighted else ("multi" if max_len > 1 else "single"),
                    max_len=max_len,
                    mean_len=float(st.get("mean_len", 0.0)),
                    present_rate=float(st.get("present_rate", 0.0)),
                    oov_rate=float(st.get("oov_rate", 0.0)),
                )
            )
    return tuple(specs)


def build_metadata(
    vocab: Vocabulary,
    encode_report: Mapping[str, Any],
    sampling_report: Mapping[str, Any],
    *,
    skeleton: Sequence[str],
    common: Sequence[str],
    valid_fraction: float,
    seed: int,
    vocab_settings: Mapping[str, Any],
) -> DatasetMetadata:
    """The metadata of one data-processing run: encoding's field statistics and split sizes,
    with the training split's sizes and rates taken after negative sampling."""
    splits = encode_report["splits"]
    split_sizes = {s: {k: v for k, v in splits[s].items() if k != "fields"} for s in splits}
    split_sizes["train"] = dict(sampling_report["kept"])
    return DatasetMetadata(
        fields=_field_specs(vocab, skeleton, common, splits["train_all"]["fields"]),
        splits={s: split_sizes[s] for s in ("train", "valid", "test")},
        neg_keep_prob_train=float(sampling_report["keep_prob"]),
        valid_fraction=valid_fraction,
        common_records={s: splits[f"{s}_commons"]["rows"] for s in ("train", "test")},
        vocab=dict(vocab_settings),
        vocab_fingerprint=vocab.fingerprint,
        seed=seed,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def describe(
    vocabularies: pd.DataFrame,
    encode_report: Mapping[str, Any],
    sampling_report: Mapping[str, Any],
    data: DataConfig,
    vocab: VocabConfig,
) -> DatasetMetadata:
    """:func:`build_metadata` from the vocabulary table and the ``data`` / ``vocab`` settings."""
    return build_metadata(
        Vocabulary(vocabularies, vocab.hash_buckets),
        encode_report,
        sampling_report,
        skeleton=data.fields.skeleton,
        common=data.fields.common,
        valid_fraction=data.valid_fraction,
        seed=data.seed,
        vocab_settings=vocab.model_dump(),
    )
