"""The synthetic world's blocks as Ali-CCP text lines (skeleton and common-features)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rec_pipeline.data.aliccp.format import BEHAVIOUR_FIELDS, PROFILE_FIELDS
from rec_pipeline.data.aliccp.writer import (
    NEWLINE,
    TEXT,
    concat,
    int_text,
    join_columns,
    rows_from_tokens,
)
from rec_pipeline.data.hashing import mix64
from rec_pipeline.data.synthetic.blocks import Block
from rec_pipeline.data.synthetic.params import MAX_EVENTS, SyntheticConfig
from rec_pipeline.data.synthetic.world import World

_LABEL_TEXT = pa.array(["0,0", "1,0", "1,1"], type=TEXT)

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex16(x: np.ndarray) -> pa.Array:
    """uint64 values as 16-char lower-case hex strings (vectorised)."""
    shifts = np.arange(60, -1, -4, dtype=np.uint64)
    nibbles = ((x[:, None] >> shifts[None, :]) & np.uint64(15)).astype(np.intp)
    data = np.ascontiguousarray(_HEX[nibbles])
    offsets = np.arange(0, 16 * len(x) + 1, 16, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(len(x), pa.py_buffer(offsets), pa.py_buffer(data))


_VALUE_TEXT = pa.array(
    ["\x031.0"] + [f"\x03{math.log1p(c):.6g}" for c in range(1, MAX_EVENTS + 1)], type=TEXT
)


def skeleton_lines(
    world: World,
    block: Block,
    sample_ids: np.ndarray,
    labels: np.ndarray,
    cfi: pa.Array,
) -> tuple[pa.Array, int]:
    n = len(block.rec)
    crosses = []
    n_feat = world.item_nfeat[block.item] + 1 + block.x853_row_counts
    for cf in ("508", "509", "702"):
        counts = block.cross_count[cf]
        present = counts > 0
        ent = {"508": world.item_cat, "509": world.item_shop, "702": world.item_brand}[cf]
        tokens = concat(
            pc.take(world.cross_prefix[cf], ent[block.item[present]]),
            pc.take(_VALUE_TEXT, counts[present]),
        )
        crosses.append(rows_from_tokens(tokens, present.astype(np.int64)))
        n_feat = n_feat + present
    tokens = concat(
        pc.take(world.cross_prefix["853"], block.x853_entity),
        pc.take(_VALUE_TEXT, block.x853_count),
    )
    crosses.append(rows_from_tokens(tokens, block.x853_row_counts))
    features = concat(
        pc.take(world.item_tokens, block.item),
        pc.take(world.pos_tokens, block.pos),
        *crosses,
        NEWLINE,
    )
    lines = join_columns(
        int_text(sample_ids),
        pc.take(_LABEL_TEXT, labels),
        pc.take(cfi, block.rec),
        int_text(n_feat),
        features,
    )
    assert len(lines) == n
    return lines, int(n_feat.sum())


def common_lines(world: World, block: Block, cfi: pa.Array) -> tuple[pa.Array, int]:
    n_c = len(block.users)
    lists = []
    n_feat = np.full(n_c, 1 + len(PROFILE_FIELDS), dtype=np.int64)
    for f in BEHAVIOUR_FIELDS:
        tokens = concat(
            pc.take(world.behaviour_prefix[f], block.beh_entity[f]),
            pc.take(_VALUE_TEXT, block.beh_count[f]),
        )
        counts = np.diff(block.beh_offsets[f])
        lists.append(rows_from_tokens(tokens, counts))
        n_feat += counts
    features = concat(pc.take(world.user_tokens, block.users), *lists, NEWLINE)
    lines = join_columns(cfi, int_text(n_feat), features)
    return lines, int(n_feat.sum())


def cfi_values(config: SyntheticConfig, split_key: int, first: int, n: int) -> np.ndarray:
    key = (np.uint64(split_key) << np.uint64(40)) | np.arange(first, first + n, dtype=np.uint64)
    salt = np.uint64(mix64(np.array([config.seed], dtype=np.uint64))[0])
    return mix64(key ^ salt)
