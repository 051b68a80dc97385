"""The train/valid group split and the negative sampling of training rows.

Both are pure functions of their inputs and a seed, so a rerun reproduces the same rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def _hash_key(seed: int) -> str:
    # pandas' hash_array takes a 16-character key; derive it from the seed.
    return f"{seed % 10**16:016d}"


def valid_group_mask(keys: pa.Array | pa.ChunkedArray, fraction: float, seed: int) -> np.ndarray:
    """bool [N]: True where the row's common_feature_index falls in the validation groups.

    A group goes to validation when a seeded hash of its key, mapped to [0, 1), is below
    ``fraction``: every row of a group lands on the same side, in any file order and any chunking.
    Keys are hashed once per distinct value (a chunk holds few groups: the files are grouped).
    """
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    encoded = pc.dictionary_encode(keys)
    uniques = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    if len(uniques) == 0:
        return np.zeros(len(keys), dtype=bool)
    h = pd.util.hash_array(uniques, hash_key=_hash_key(seed), categorize=False)
    is_valid = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction
    return is_valid[encoded.indices.to_numpy(zero_copy_only=False)]


def negative_keep_mask(click: np.ndarray, keep_prob: float, seed: int, chunk: int) -> np.ndarray:
    """bool [N]: keep every click=1 row and each click=0 row with probability ``keep_prob``.

    The generator is seeded by (seed, chunk index), so the result does not depend on how many
    chunks were processed before in this process.
    """
    keep = np.ones(len(click), dtype=bool)
    if keep_prob >= 1.0:
        return keep
    rng = np.random.default_rng([seed, chunk])
    neg = click == 0
    keep[neg] = rng.random(int(neg.sum())) < keep_prob
    return keep
