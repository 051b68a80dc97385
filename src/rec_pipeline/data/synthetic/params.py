"""The generator's config (:class:`SyntheticConfig`, its fingerprint) and its fixed constants."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from rec_pipeline.config import SyntheticParams
from rec_pipeline.data.aliccp.format import PROFILE_FIELDS

# Part of the fingerprint: bump it whenever the data written for a given config change (the raw
# files' bytes, the truth's values; not the truth's Parquet encoding).
GENERATOR_VERSION = 2
MARKER_NAME = "_synthetic.json"
TRUTH_FILE_NAMES = ("truth_train.parquet", "truth_test.parquet")

# Feature ids lie in [1, MAX_FEATURE_ID).
MAX_FEATURE_ID = 3_400_000_000
# Number of values of each profile field (as in Ali-CCP).
PROFILE_CARDINALITY = dict(zip(PROFILE_FIELDS, (97, 13, 2, 7, 3, 3, 2, 4), strict=True))

# Common records per block of randomness (fixed: the output must not depend on chunk_rows).
BLOCK_COMMONS = 512
# Cap on behaviour events of one common record (bounds list lengths and weight values): the
# largest behaviour_events_mean the config accepts.
MAX_EVENTS = int(
    next(
        m.le
        for m in SyntheticParams.model_fields["behaviour_events_mean"].metadata
        if getattr(m, "le", None) is not None
    )
)
# Size of the pilot sample that calibrates the term scales and intercepts: PILOT_ROWS rows, but
# at most PILOT_COMMONS common records (at least 20k rows), which bounds its cost.
PILOT_ROWS = 100_000
PILOT_COMMONS = 5_000
# Saturating affinity: Hill exponent, and the spread (log-normal sigma) of the per-entity
# thresholds around the median count of the cross field's present entries.
HILL = 4.0
THRESHOLD_SPREAD = 0.5
# Keys that set how the work is cut and spread, not what is written: never in the fingerprint.
_WORK_LAYOUT = ("chunk_rows", "workers")
# Keys whose default leaves the output as it was before they existed; they enter the fingerprint
# only when set to something else.
_NEUTRAL_DEFAULTS = {
    "test_new_user_fraction": 0.0,
    "test_new_item_fraction": 0.0,
    "affinity_shape": "linear",
}


class SyntheticConfig(SyntheticParams):
    """:class:`rec_pipeline.config.SyntheticParams` (keys, defaults, checks) plus the fingerprint.

    ``n_train_rows`` / ``n_test_rows`` are exact impression counts. To scale to tens of millions
    of rows, scale ``n_users`` and ``n_items`` too (otherwise each user owns very many records).
    """

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any] | None) -> SyntheticConfig:
        """Build from a parameters mapping; unknown keys are an error (naming the valid ones)."""
        params = dict(params or {})
        names = set(cls.model_fields)
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(
                f"unknown synthetic data parameter(s) {unknown}; valid keys: {sorted(names)}"
            )
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def fingerprint(self) -> str:
        """Stable hash of the output-defining fields and the generator version (16 hex chars).

        ``chunk_rows`` and ``workers`` only set how the work is cut and spread over processes
        (the bytes depend on neither), so they are left out: changing them alone does not make
        the files look foreign or stale. Keys added after
        generator version 2 enter only when set away from their default (at which the bytes are
        those of before), so the fingerprints of configs that leave them alone, and the files
        already written for them, stay valid.
        """
        fields = {
            k: v
            for k, v in self.to_dict().items()
            if k not in _WORK_LAYOUT and not (k in _NEUTRAL_DEFAULTS and v == _NEUTRAL_DEFAULTS[k])
        }
        payload = json.dumps(
            {"generator_version": GENERATOR_VERSION, **fields},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
