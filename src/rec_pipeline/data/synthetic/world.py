"""The world: vocabularies and their raw ids, catalogue, users, effects and the text pieces.

Everything of the default world comes from one stream (key 99), drawn in a fixed order; the
test-only users (98) and items (97) and the saturating affinity (96) each come from their own,
so they leave the rest as it was.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rec_pipeline.data.aliccp.format import CROSS_FIELDS, PROFILE_FIELDS
from rec_pipeline.data.aliccp.writer import TEXT, concat, int_text, rows_from_tokens
from rec_pipeline.data.synthetic.params import (
    HILL,
    PROFILE_CARDINALITY,
    THRESHOLD_SPREAD,
    SyntheticConfig,
)
from rec_pipeline.data.synthetic.sampling import (
    GroupSampler,
    assign_groups,
    categorical,
    csr_offsets,
    distinct_ids,
    fresh_ids,
    rng_for,
    sorted_unique,
    zipf_weights,
)

# Column of each profile field in the users' profile matrix.
_COL = {f: i for i, f in enumerate(PROFILE_FIELDS)}
# Entity vocabulary counted by each behaviour list / crossed by each cross field.
_BEHAVIOUR_ENTITY = {"109_14": "206", "110_14": "207", "127_14": "216", "150_14": "210"}


@dataclass
class Affinity:
    """Per-entity parameters of the "saturating" affinity, per cross field."""

    slope: dict[str, np.ndarray]
    spread: dict[str, np.ndarray]  # per-entity factor of the threshold
    threshold: dict[str, np.ndarray] | None = None  # set from the pilot sample

    def term(self, cross: str, entity: np.ndarray, count: np.ndarray) -> np.ndarray:
        """``slope * c^n / (c^n + h^n)`` of each (entity, count) pair (0 where count is 0)."""
        assert self.threshold is not None
        c = count.astype(np.float64) ** HILL
        h = self.threshold[cross][entity] ** HILL
        return self.slope[cross][entity] * c / (c + h)


@dataclass
class World:
    n_topics: int
    latent_dim: int
    # users: the first n_old_users exist in both periods, the rest only in the test period
    n_old_users: int
    user_ids: np.ndarray  # raw 101 id per user
    user_profile: np.ndarray  # (n_users, 8) value indices
    user_activity: np.ndarray  # over the old users
    new_user_activity: np.ndarray | None  # over the new users
    user_theta_flat: np.ndarray  # per user cumulative topic distribution + user index
    user_u: np.ndarray
    user_effect: np.ndarray  # sum of profile first-order CTR effects
    # items: likewise, the first n_old_items in both periods
    n_old_items: int
    item_ids: np.ndarray  # raw 205 id per item
    item_topic: np.ndarray
    item_cat: np.ndarray
    item_shop: np.ndarray
    item_brand: np.ndarray
    item_int_start: np.ndarray
    item_int_count: np.ndarray
    item_int: np.ndarray
    item_v: np.ndarray
    item_effect: np.ndarray
    item_quality: np.ndarray
    item_sampler: GroupSampler  # old items
    new_item_sampler: GroupSampler | None  # new items
    topic_mass: np.ndarray
    # effects
    cat_effect: np.ndarray
    pos_effect: np.ndarray
    pos_p: np.ndarray
    age_cat: np.ndarray  # G[age, category]
    cons_cat: np.ndarray  # H[consumption I, category]
    cons2_effect: np.ndarray  # CVR effect of 127
    affinity: Affinity | None  # None: the linear affinity
    # text pieces
    user_tokens: pa.Array  # "101...\x01121...\x01129..." per user (9 features)
    item_tokens: pa.Array  # "205...\x01206...\x01207...\x01216...\x01210...(x n)" per item
    item_nfeat: np.ndarray
    pos_tokens: pa.Array
    behaviour_prefix: dict[str, pa.Array]  # "\x01109_14\x02<id>\x03" per entity
    cross_prefix: dict[str, pa.Array]  # "\x01508\x02<id>\x03" per entity


@dataclass
class _Items:
    topic: np.ndarray
    cat: np.ndarray
    shop: np.ndarray
    brand: np.ndarray
    int_count: np.ndarray
    int_nodes: np.ndarray  # intention nodes, item by item (CSR values)

    def extended(self, new: _Items) -> _Items:
        return _Items(
            *(
                np.concatenate([getattr(self, f.name), getattr(new, f.name)])
                for f in dataclasses.fields(_Items)
            )
        )


@dataclass
class _Catalogue:
    topic_pop: np.ndarray
    samplers: dict[str, GroupSampler]  # per attribute vocabulary, grouped by topic
    items: _Items
    item_sampler: GroupSampler
    topic_mass: np.ndarray  # share of item popularity per topic


@dataclass
class _UserModel:
    """What draws a user: profile distributions, topic prior and the latent-vector parts."""

    profile_p: list[np.ndarray]
    theta_alpha: np.ndarray
    topic_mass: np.ndarray
    noise: float
    p_gender: np.ndarray
    p_age: np.ndarray
    p_cons: np.ndarray
    profile_effect: dict[str, np.ndarray]

    def topic_cum(self, theta: np.ndarray) -> np.ndarray:
        return _topic_cum(theta, self.topic_mass)

    def latent(self, profile: np.ndarray, noise_draw: np.ndarray) -> np.ndarray:
        return (
            self.p_gender[profile[:, _COL["124"]]]
            + self.p_age[profile[:, _COL["125"]]]
            + self.p_cons[profile[:, _COL["126"]]]
            + self.noise * noise_draw
        ) / math.sqrt(3.0 + self.noise**2)

    def effect(self, profile: np.ndarray) -> np.ndarray:
        out = np.zeros(len(profile))
        for f in PROFILE_FIELDS:
            out += self.profile_effect[f][profile[:, _COL[f]]]
        return out


@dataclass
class _Users:
    ids: np.ndarray
    profile: np.ndarray
    activity: np.ndarray  # old users, normalised
    theta_cum: np.ndarray
    u: np.ndarray
    new_activity: np.ndarray | None = None


@dataclass
class _ItemEffects:
    cat_latent: np.ndarray
    v: np.ndarray
    effect: np.ndarray
    quality: np.ndarray


def _topic_cum(theta: np.ndarray, topic_mass: np.ndarray) -> np.ndarray:
    """Each user's cumulative topic distribution: its draw, shrunk towards the topic mass."""
    theta = theta / np.maximum(theta.sum(axis=1, keepdims=True), 1e-300)
    theta = 0.85 * theta + 0.15 * topic_mass
    theta_cum = np.cumsum(theta, axis=1)
    return theta_cum / theta_cum[:, -1:]


def _item_latent(
    cat_latent: np.ndarray, cat: np.ndarray, noise_draw: np.ndarray, noise: float
) -> np.ndarray:
    return (cat_latent[cat] + noise * noise_draw) / math.sqrt(1.0 + noise**2)


def build_world(config: SyntheticConfig) -> World:
    """The world: vocabularies, catalogue, users and effects."""
    rng = rng_for(config, 99)
    all_ids, raw = _raw_ids(config, rng)
    cat = _catalogue(config, rng)
    model, users = _draw_users(config, rng, cat.topic_mass, raw["101"])
    fx = _draw_item_effects(config, rng, cat.items)
    effects = _draw_effects(config, rng)
    _add_new_users(config, model, users, all_ids)
    items, item_ids, new_item_sampler = _add_new_items(config, cat, fx, raw, all_ids, users.ids)
    return World(
        n_topics=config.n_topics,
        latent_dim=config.latent_dim,
        n_old_users=config.n_users,
        user_ids=users.ids,
        user_profile=users.profile,
        user_activity=users.activity,
        new_user_activity=users.new_activity,
        user_theta_flat=(users.theta_cum + np.arange(len(users.ids))[:, None]).ravel(),
        user_u=users.u,
        user_effect=model.effect(users.profile),
        n_old_items=config.n_items,
        item_ids=item_ids,
        item_topic=items.topic,
        item_cat=items.cat,
        item_shop=items.shop,
        item_brand=items.brand,
        item_int_start=np.cumsum(items.int_count) - items.int_count,
        item_int_count=items.int_count,
        item_int=items.int_nodes,
        item_v=fx.v,
        item_effect=fx.effect,
        item_quality=fx.quality,
        item_sampler=cat.item_sampler,
        new_item_sampler=new_item_sampler,
        topic_mass=cat.topic_mass,
        **effects,
        affinity=_draw_affinity(config),
        **_text_pieces(raw, users, items, item_ids),
    )


def _raw_ids(config: SyntheticConfig, rng: np.random.Generator):
    """All raw ids, and one injective block of them per vocabulary."""
    sizes = {
        "101": config.n_users,
        **{f: PROFILE_CARDINALITY[f] for f in PROFILE_FIELDS},
        "205": config.n_items,
        "206": config.n_categories,
        "207": config.n_shops,
        "216": config.n_brands,
        "210": config.n_intentions,
        "301": config.n_positions,
        "508": config.n_categories,
        "509": config.n_shops,
        "702": config.n_brands,
        "853": config.n_intentions,
    }
    all_ids = distinct_ids(rng, sum(sizes.values()))
    raw: dict[str, np.ndarray] = {}
    at = 0
    for name, n in sizes.items():
        raw[name] = all_ids[at : at + n]
        at += n
    return all_ids, raw


def _catalogue(config: SyntheticConfig, rng: np.random.Generator) -> _Catalogue:
    """Topics, the attribute vocabularies grouped by topic, and the items."""
    T = config.n_topics
    topic_pop = rng.dirichlet(np.full(T, 2.0))
    cat_topic = assign_groups(rng, config.n_categories, topic_pop)
    shop_topic = assign_groups(rng, config.n_shops, topic_pop)
    brand_topic = assign_groups(rng, config.n_brands, topic_pop)
    int_topic = assign_groups(rng, config.n_intentions, topic_pop)
    samplers = {
        "206": GroupSampler.build(cat_topic, zipf_weights(rng, config.n_categories, 0.8), T),
        "207": GroupSampler.build(shop_topic, zipf_weights(rng, config.n_shops, 0.8), T),
        "216": GroupSampler.build(brand_topic, zipf_weights(rng, config.n_brands, 0.8), T),
        "210": GroupSampler.build(int_topic, zipf_weights(rng, config.n_intentions, 0.6), T),
    }
    items = _draw_items(rng, config.n_items, topic_pop, samplers, config.n_intentions)
    item_pop = zipf_weights(rng, config.n_items, config.item_zipf)
    item_sampler = GroupSampler.build(items.topic, item_pop, T)
    topic_mass = item_sampler.hi - item_sampler.lo
    return _Catalogue(topic_pop, samplers, items, item_sampler, topic_mass / topic_mass.sum())


def _draw_items(
    rng: np.random.Generator,
    n: int,
    topic_pop: np.ndarray,
    samplers: dict[str, GroupSampler],
    n_intentions: int,
) -> _Items:
    """Topic, category, shop, brand and 1-4 distinct intention nodes of ``n`` items."""
    topic = assign_groups(rng, n, topic_pop)
    cat = samplers["206"].sample(rng, topic)
    shop = samplers["207"].sample(rng, topic)
    brand = samplers["216"].sample(rng, topic)
    want = 1 + rng.binomial(3, 0.3, size=n)
    owner = np.repeat(np.arange(n), want)
    nodes = samplers["210"].sample(rng, topic[owner])
    keys = sorted_unique(owner.astype(np.int64) * n_intentions + nodes)
    int_owner, int_nodes = keys // n_intentions, keys % n_intentions
    return _Items(topic, cat, shop, brand, np.diff(csr_offsets(int_owner, n)), int_nodes)


def _draw_users(
    config: SyntheticConfig, rng: np.random.Generator, topic_mass: np.ndarray, ids: np.ndarray
) -> tuple[_UserModel, _Users]:
    """The old users, and the model that draws them (reused for the test-only users)."""
    n_users, k, T = config.n_users, config.latent_dim, config.n_topics
    profile_p, profile_cols = [], []
    for f in PROFILE_FIELDS:
        profile_p.append(rng.dirichlet(np.full(PROFILE_CARDINALITY[f], 2.0)))
        profile_cols.append(categorical(rng, profile_p[-1], n_users))
    profile = np.stack(profile_cols, axis=1)
    activity = rng.lognormal(0.0, 0.8, size=n_users)
    theta_alpha = np.maximum(0.3 * T * topic_mass, 1e-3)
    theta_cum = _topic_cum(rng.gamma(theta_alpha, size=(n_users, T)), topic_mass)
    p_latent = [rng.normal(size=(PROFILE_CARDINALITY[f], k)) for f in ("124", "125", "126")]
    noise_draw = rng.normal(size=(n_users, k))
    profile_effect = {f: rng.normal(0.0, 1.0, size=PROFILE_CARDINALITY[f]) for f in PROFILE_FIELDS}
    model = _UserModel(
        profile_p, theta_alpha, topic_mass, config.latent_noise, *p_latent, profile_effect
    )
    user_u = model.latent(profile, noise_draw)
    users = _Users(ids, profile, activity / activity.sum(), theta_cum, user_u)
    return model, users


def _draw_item_effects(
    config: SyntheticConfig, rng: np.random.Generator, items: _Items
) -> _ItemEffects:
    k = config.latent_dim
    cat_latent = rng.normal(size=(config.n_categories, k))
    noise_draw = rng.normal(size=(config.n_items, k))
    v = _item_latent(cat_latent, items.cat, noise_draw, config.latent_noise)
    effect = rng.normal(size=config.n_items)
    return _ItemEffects(cat_latent, v, effect, rng.normal(size=config.n_items))


def _draw_effects(config: SyntheticConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Category, position and profile x category effects (fields of :class:`World`)."""
    cat_effect = rng.normal(size=config.n_categories)
    pos_p = 0.6 ** np.arange(config.n_positions)
    return dict(
        cat_effect=cat_effect,
        pos_effect=-np.arange(config.n_positions, dtype=np.float64),
        pos_p=pos_p / pos_p.sum(),
        age_cat=rng.normal(size=(PROFILE_CARDINALITY["125"], config.n_categories)),
        cons_cat=rng.normal(size=(PROFILE_CARDINALITY["126"], config.n_categories)),
        cons2_effect=rng.normal(size=PROFILE_CARDINALITY["127"]),
    )


def _add_new_users(
    config: SyntheticConfig, model: _UserModel, users: _Users, all_ids: np.ndarray
) -> None:
    """Append the users that exist only in the test period."""
    n_new = new_pool_size(config.n_users, config.test_new_user_fraction, 1)
    if not n_new:
        return
    rng = rng_for(config, 98)
    k, T = config.latent_dim, config.n_topics
    new_profile = np.stack([categorical(rng, p, n_new) for p in model.profile_p], axis=1)
    new_activity = rng.lognormal(0.0, 0.8, size=n_new)
    new_theta_cum = model.topic_cum(rng.gamma(model.theta_alpha, size=(n_new, T)))
    new_u = model.latent(new_profile, rng.normal(size=(n_new, k)))
    users.ids = np.concatenate([users.ids, fresh_ids(rng, n_new, all_ids)])
    users.profile = np.concatenate([users.profile, new_profile])
    users.theta_cum = np.concatenate([users.theta_cum, new_theta_cum])
    users.u = np.concatenate([users.u, new_u])
    users.new_activity = new_activity / new_activity.sum()


def _add_new_items(
    config: SyntheticConfig,
    cat: _Catalogue,
    fx: _ItemEffects,
    raw: dict[str, np.ndarray],
    all_ids: np.ndarray,
    user_ids: np.ndarray,
) -> tuple[_Items, np.ndarray, GroupSampler | None]:
    """All items (the test-only ones appended), their raw ids and the new items' sampler."""
    n_items, T = config.n_items, config.n_topics
    n_new = new_pool_size(n_items, config.test_new_item_fraction, T)
    if not n_new:
        return cat.items, raw["205"], None
    rng = rng_for(config, 97)
    new = _draw_items(rng, n_new, cat.topic_pop, cat.samplers, config.n_intentions)
    sampler = GroupSampler.build(new.topic, zipf_weights(rng, n_new, config.item_zipf), T)
    sampler.members = sampler.members + n_items
    noise_draw = rng.normal(size=(n_new, config.latent_dim))
    new_v = _item_latent(fx.cat_latent, new.cat, noise_draw, config.latent_noise)
    fx.v = np.concatenate([fx.v, new_v])
    fx.effect = np.concatenate([fx.effect, rng.normal(size=n_new)])
    fx.quality = np.concatenate([fx.quality, rng.normal(size=n_new)])
    taken = np.concatenate([all_ids, user_ids])
    item_ids = np.concatenate([raw["205"], fresh_ids(rng, n_new, taken)])
    return cat.items.extended(new), item_ids, sampler


def _draw_affinity(config: SyntheticConfig) -> Affinity | None:
    """Per-entity parameters of the saturating affinity (None for the linear one)."""
    if config.affinity_shape != "saturating":
        return None
    rng = rng_for(config, 96)
    n_ent = {
        "508": config.n_categories,
        "509": config.n_shops,
        "702": config.n_brands,
        "853": config.n_intentions,
    }
    slope, spread = {}, {}
    for cf in CROSS_FIELDS:
        slope[cf] = 1.0 + rng.normal(size=n_ent[cf])
        spread[cf] = np.exp(THRESHOLD_SPREAD * rng.normal(size=n_ent[cf]))
    return Affinity(slope, spread)


def _field_tokens(field_id: str, ids: np.ndarray, value: str | None, first: bool = False):
    head = ("" if first else "\x01") + field_id + "\x02"
    tail = "\x03" + value if value is not None else ""
    return concat(pa.scalar(head, type=TEXT), int_text(ids), pa.scalar(tail, type=TEXT))


def _text_pieces(
    raw: dict[str, np.ndarray], users: _Users, items: _Items, item_ids: np.ndarray
) -> dict[str, object]:
    """Prebuilt feature text per user, item, position and entity (fields of :class:`World`)."""
    user_parts = [_field_tokens("101", users.ids, "1.0", first=True)]
    for f in PROFILE_FIELDS:
        user_parts.append(pc.take(_field_tokens(f, raw[f], "1.0"), users.profile[:, _COL[f]]))
    int_tokens = _field_tokens("210", raw["210"][items.int_nodes], "1.0")
    item_tokens = concat(
        _field_tokens("205", item_ids, "1.0", first=True),
        _field_tokens("206", raw["206"][items.cat], "1.0"),
        _field_tokens("207", raw["207"][items.shop], "1.0"),
        _field_tokens("216", raw["216"][items.brand], "1.0"),
        rows_from_tokens(int_tokens, items.int_count),
    )
    return dict(
        user_tokens=concat(*user_parts),
        item_tokens=item_tokens,
        item_nfeat=4 + items.int_count,
        pos_tokens=_field_tokens("301", raw["301"], "1.0"),
        behaviour_prefix={f: _field_tokens(f, raw[e], None) for f, e in _BEHAVIOUR_ENTITY.items()},
        cross_prefix={f: _field_tokens(f, raw[f], None) for f in CROSS_FIELDS},
    )


def new_pool_size(n_old: int, fraction: float, minimum: int) -> int:
    """Size of a test-only pool that gets ``fraction`` of the test draws, 0 when none.

    ``n_old * f / (1 - f)``: a new entity gets about as many test draws as an old one.
    """
    if fraction <= 0.0:
        return 0
    return max(minimum, round(n_old * fraction / (1.0 - fraction)))
