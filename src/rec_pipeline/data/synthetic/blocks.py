"""Blocks of common records and their impressions, drawn as numbers, with the raw logit terms.

Randomness is drawn per block of ``BLOCK_COMMONS`` common records from its own stream, seeded by
the block's index, so the bytes depend on the config but neither on ``chunk_rows`` nor on how
many processes draw the blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rec_pipeline.data.aliccp.format import CROSS_FIELDS, PROFILE_FIELDS
from rec_pipeline.data.synthetic.params import BLOCK_COMMONS, MAX_EVENTS, SyntheticConfig
from rec_pipeline.data.synthetic.sampling import categorical, csr_offsets, rng_for
from rec_pipeline.data.synthetic.world import World


@dataclass
class Block:
    """One block of common records and their impressions, as numbers."""

    users: np.ndarray  # per record
    beh_offsets: dict[str, np.ndarray]  # per behaviour field: CSR offsets over records
    beh_entity: dict[str, np.ndarray]
    beh_count: dict[str, np.ndarray]
    rec: np.ndarray  # per row: record index within the block
    item: np.ndarray
    pos: np.ndarray
    cross_count: dict[str, np.ndarray]  # 508/509/702: per row (0 = absent)
    x853_row_counts: np.ndarray  # per row number of 853 entries
    x853_entity: np.ndarray
    x853_count: np.ndarray
    terms: dict[str, np.ndarray]  # CTR logit terms, before scaling
    cvr_terms: dict[str, np.ndarray]  # own CVR logit terms, before scaling


def _topics_of_users(rng: np.random.Generator, world: World, users: np.ndarray) -> np.ndarray:
    T = world.n_topics
    pos = np.searchsorted(world.user_theta_flat, users + rng.random(len(users)), side="right")
    return np.clip(pos - users * T, 0, T - 1)


def _lookup(keys: np.ndarray, table: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """counts[table == key] for each key, 0 where absent (``table`` sorted, unique)."""
    if len(table) == 0:
        return np.zeros(len(keys), dtype=np.int64)
    idx = np.minimum(np.searchsorted(table, keys), len(table) - 1)
    return np.where(table[idx] == keys, counts[idx], 0)


def generate_block(
    world: World,
    config: SyntheticConfig,
    rng: np.random.Generator,
    users: np.ndarray,
    sizes: np.ndarray,
    test_period: bool = False,
) -> Block:
    beh = _behaviour(world, config, rng, users)
    rec, item, pos = _impressions(world, config, rng, users, sizes, test_period)
    cross_count, pairs = _crosses(world, config, rec, item, beh)
    pair_row, pair_ent, pair_count = pairs
    hit = pair_count > 0
    n = len(rec)
    terms, cvr_terms = _raw_terms(world, users[rec], item, pos, cross_count, pairs)
    block = Block(
        users=users,
        beh_offsets=beh.offsets,
        beh_entity=beh.entity,
        beh_count=beh.count,
        rec=rec,
        item=item,
        pos=pos,
        cross_count=cross_count,
        x853_row_counts=np.bincount(pair_row[hit], minlength=n),
        x853_entity=pair_ent[hit],
        x853_count=pair_count[hit],
        terms=terms,
        cvr_terms=cvr_terms,
    )
    if world.affinity is not None and world.affinity.threshold is not None:
        block.terms["affinity"] = saturating_affinity(world, block)
    return block


@dataclass
class _Behaviour:
    """Per behaviour field, each record's distinct entities and their event counts (CSR)."""

    keys: dict[str, np.ndarray]  # record * n_entities + entity, sorted
    offsets: dict[str, np.ndarray]
    entity: dict[str, np.ndarray]
    count: dict[str, np.ndarray]


def _behaviour(
    world: World, config: SyntheticConfig, rng: np.random.Generator, users: np.ndarray
) -> _Behaviour:
    """14-day behaviour of each record: events on items of the user's topics."""
    n_c = len(users)
    lam = rng.gamma(2.0, (config.behaviour_events_mean - 1.0) / 2.0, size=n_c)
    n_ev = np.minimum(1 + rng.poisson(lam), MAX_EVENTS)
    ev_rec = np.repeat(np.arange(n_c, dtype=np.int64), n_ev)
    ev_item = world.item_sampler.sample(rng, _topics_of_users(rng, world, users[ev_rec]))
    pick = world.item_int_start[ev_item] + (
        rng.random(len(ev_item)) * world.item_int_count[ev_item]
    ).astype(np.int64)
    ev_entity = {
        "109_14": (world.item_cat[ev_item], config.n_categories),
        "110_14": (world.item_shop[ev_item], config.n_shops),
        "127_14": (world.item_brand[ev_item], config.n_brands),
        "150_14": (world.item_int[pick], config.n_intentions),
    }
    beh = _Behaviour({}, {}, {}, {})
    for f, (ent, n_ent) in ev_entity.items():
        keys, counts = np.unique(ev_rec * n_ent + ent, return_counts=True)
        beh.keys[f] = keys
        beh.entity[f] = keys % n_ent
        beh.count[f] = counts
        beh.offsets[f] = csr_offsets(keys // n_ent, n_c)
    return beh


def _impressions(
    world: World,
    config: SyntheticConfig,
    rng: np.random.Generator,
    users: np.ndarray,
    sizes: np.ndarray,
    test_period: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Record, item and position of each impression."""
    n = int(sizes.sum())
    rec = np.repeat(np.arange(len(users), dtype=np.int64), sizes)
    own = _topics_of_users(rng, world, users[rec])
    other = categorical(rng, world.topic_mass, n)
    topic = np.where(rng.random(n) < config.relevance, own, other)
    item = world.item_sampler.sample(rng, topic)
    if test_period and world.new_item_sampler is not None:
        new = rng.random(n) < config.test_new_item_fraction
        item[new] = world.new_item_sampler.sample(rng, topic[new])
    pos = categorical(rng, world.pos_p, n)
    return rec, item, pos


def _crosses(
    world: World, config: SyntheticConfig, rec: np.ndarray, item: np.ndarray, beh: _Behaviour
):
    """Counts of the cross fields: per row for 508 / 509 / 702 (0 = absent), and for 853 per
    (row, intention node of the item) pair: (pair_row, pair_entity, pair_count)."""
    cross_count = {}
    for cf, bf, ent, n_ent in (
        ("508", "109_14", world.item_cat[item], config.n_categories),
        ("509", "110_14", world.item_shop[item], config.n_shops),
        ("702", "127_14", world.item_brand[item], config.n_brands),
    ):
        cross_count[cf] = _lookup(rec * n_ent + ent, beh.keys[bf], beh.count[bf])
    # 853: every intention node of the item found in the record's 150_14 list
    n = len(rec)
    n_int = world.item_int_count[item]
    pair_row = np.repeat(np.arange(n, dtype=np.int64), n_int)
    pair_start = np.repeat(world.item_int_start[item] - np.cumsum(n_int) + n_int, n_int)
    pair_ent = world.item_int[pair_start + np.arange(len(pair_row))]
    pair_count = _lookup(
        rec[pair_row] * config.n_intentions + pair_ent, beh.keys["150_14"], beh.count["150_14"]
    )
    return cross_count, (pair_row, pair_ent, pair_count)


def _raw_terms(world: World, user, item, pos, cross_count, pairs):
    """The CTR and own CVR logit terms of each row, before scaling."""
    n = len(item)
    pair_row, _, pair_count = pairs
    if world.affinity is None:
        weights = np.log1p(
            np.concatenate([cross_count[c][:, None] for c in ("508", "509", "702")], 1)
        )
        affinity = weights.sum(axis=1) + np.bincount(
            pair_row, weights=np.log1p(pair_count), minlength=n
        )
    else:  # set by the caller once the block is built (before calibration: a placeholder)
        affinity = np.zeros(n)
    cat = world.item_cat[item]
    profile = world.user_profile[user]
    uv = np.einsum("ij,ij->i", world.user_u[user], world.item_v[item]) / math.sqrt(world.latent_dim)
    terms = {
        "item": world.item_effect[item],
        "category": world.cat_effect[cat],
        "position": world.pos_effect[pos],
        "profile": world.user_effect[user],
        "user_x_item": uv,
        "age_x_category": world.age_cat[profile[:, PROFILE_FIELDS.index("125")], cat],
        "affinity": affinity,
    }
    cvr_terms = {
        "item_quality": world.item_quality[item],
        "consumption_x_category": world.cons_cat[profile[:, PROFILE_FIELDS.index("126")], cat],
        "consumption_ii": world.cons2_effect[profile[:, PROFILE_FIELDS.index("127")]],
    }
    return terms, cvr_terms


def saturating_affinity(world: World, block: Block) -> np.ndarray:
    """The saturating affinity of each row: sum of ``slope * hill(count)`` over its crosses."""
    aff = world.affinity
    assert aff is not None
    n = len(block.item)
    out = np.zeros(n)
    for cf, ent in (
        ("508", world.item_cat),
        ("509", world.item_shop),
        ("702", world.item_brand),
    ):
        out += aff.term(cf, ent[block.item], block.cross_count[cf])
    rows = np.repeat(np.arange(n, dtype=np.int64), block.x853_row_counts)
    out += np.bincount(
        rows, weights=aff.term("853", block.x853_entity, block.x853_count), minlength=n
    )
    return out


def affinity_thresholds(world: World, pilot: list[Block]) -> dict[str, np.ndarray]:
    """Per-entity thresholds: the field's median present count times the entity's spread."""
    aff = world.affinity
    assert aff is not None
    counts = {cf: [b.cross_count[cf] for b in pilot] for cf in ("508", "509", "702")}
    counts["853"] = [b.x853_count for b in pilot]
    out = {}
    for cf in CROSS_FIELDS:
        c = np.concatenate(counts[cf])
        c = c[c > 0]
        median = float(np.median(c)) if len(c) else 1.0
        out[cf] = median * aff.spread[cf]
    return out


def plan_split(
    config: SyntheticConfig, world: World, split_key: int, n_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Impressions per common record (summing exactly to n_rows) and each record's user.

    Cheap (two numbers per record), so the whole split is planned at once; the blocks cut from
    it are then independent of one another.
    """
    rng = rng_for(config, split_key, 0)
    p = 1.0 / config.impressions_per_common
    sizes = np.empty(0, dtype=np.int64)
    while sizes.sum() < n_rows:
        more = int((n_rows - sizes.sum()) * p * 1.1) + 16
        sizes = np.concatenate([sizes, rng.geometric(p, size=more).astype(np.int64)])
    cum = np.cumsum(sizes)
    n_c = int(np.searchsorted(cum, n_rows)) + 1
    sizes = sizes[:n_c]
    sizes[-1] -= int(cum[n_c - 1]) - n_rows
    users = categorical(rng, world.user_activity, n_c)
    if split_key == 1 and world.new_user_activity is not None:
        new = rng.random(n_c) < config.test_new_user_fraction
        users[new] = world.n_old_users + categorical(rng, world.new_user_activity, new.sum())
    return sizes, users


def block_at(
    config: SyntheticConfig,
    world: World,
    split_key: int,
    index: int,
    users: np.ndarray,
    sizes: np.ndarray,
) -> tuple[Block, np.random.Generator]:
    """Block ``index`` of a split (its records' users and impression counts given), and its
    stream, which the caller goes on drawing the labels from.

    The stream is keyed by the block's index alone, so any process can draw any block.
    """
    rng = rng_for(config, split_key, 1, index)
    return generate_block(world, config, rng, users, sizes, split_key == 1), rng


def blocks(config: SyntheticConfig, world: World, split_key: int, n_rows: int):
    """Every block of a split in order, as (first record, block, stream)."""
    sizes, users = plan_split(config, world, split_key, n_rows)
    for b, start in enumerate(range(0, len(sizes), BLOCK_COMMONS)):
        sl = slice(start, start + BLOCK_COMMONS)
        block, rng = block_at(config, world, split_key, b, users[sl], sizes[sl])
        yield start, block, rng
