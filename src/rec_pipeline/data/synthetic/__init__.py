"""Seeded synthetic Ali-CCP data drawn from a planted ground truth: the generator package.

Modules: :mod:`.params` (config, fingerprint, constants), :mod:`.sampling` (seeded draws),
:mod:`.world` (vocabularies, catalogue, users, effects), :mod:`.blocks` (records and impressions
as numbers), :mod:`.truth` (calibration and oracle AUCs), :mod:`.lines` (text lines),
:mod:`.chunks` (runs of blocks drawn, labelled and written on their own), :mod:`.processes` and
:mod:`.shared` (chunks written by worker processes that map one copy of the world),
:mod:`.summary` and :mod:`.output` (writing the files and the marker).

:func:`write_synthetic` writes the four raw files of docs/model.md, Data byte-for-byte in the Ali-CCP text
format (so the real parser is what reads them), plus ``truth_{split}.parquet`` with each sample's
true click and conversion probabilities, so the Bayes-optimal ("oracle") AUC of every task is
known. Library code: no Kedro imports.

The world
---------
* **Topics.** ``n_topics`` latent interest topics. Every category, shop, brand and intention node
  belongs to one topic; each item draws its topic by topic popularity, then its category (206),
  shop (207) and brand (216) from that topic (Zipf-like popularity inside the topic) and 1-4
  distinct intention nodes (210) from the topic's nodes.
* **Items** (205) have Zipf popularity (exponent ``item_zipf``), a latent vector
  ``v = (C[category] + latent_noise * noise) / sqrt(1 + latent_noise^2)`` in R^k, a CTR effect
  and a CVR "quality" effect.
* **Users** (101) have eight profile fields (121 profile, 122 group, 124 gender, 125 age,
  126 / 127 consumption level I / II, 128 occupation, 129 geography), an activity weight, a topic
  preference ``theta`` (Dirichlet around the topic popularity) and a latent vector
  ``u = (P124[gender] + P125[age] + P126[consumption] + latent_noise * noise) / sqrt(3 +
  latent_noise^2)`` in R^k.
* **Common records** (one line of ``common_features_*.csv``, a user's session) belong to a user
  drawn by activity, so a user owns several records across both splits. Each record carries the
  user's profile and its own 14-day behaviour: about ``behaviour_events_mean`` past events (an
  item drawn from the user's topics); the event items' categories, shops, brands and one
  intention node each are counted and written as the weighted multi-hot lists 109_14 / 110_14 /
  127_14 / 150_14 with weight ``ln(1 + count)``. At the default size the lists hold on average
  55 / 70 / 67 / 73 ids (up to ~300), ~275 common features per record.
* **Impressions** (one line of ``sample_skeleton_*.csv``): each record has a geometric (>= 1)
  number of impressions (mean ``impressions_per_common``), written consecutively. An
  impression's item comes from the user's topics with probability ``relevance``, else from
  global popularity; the position/scenario 301 takes one of ``n_positions`` values. The cross
  fields 508 / 509 / 702 / 853 (109_14 x 206, 110_14 x 207, 127_14 x 216, 150_14 x 210) are
  present exactly when the item's category / shop / brand / intention node is in the record's
  behaviour list, with that list's weight as value (853 multi-hot, one entry per matching
  intention node). Default presence: 508 46 %, 509 31 %, 702 35 %, 853 38 % of rows; ~8.4
  skeleton features per row.

Feature ids are large sparse integers in ``[1, 3.4e9)``: every vocabulary (users, each profile
field, items, categories, shops, brands, intention nodes, positions and each cross field) gets
its own block of a seeded random injective map, drawn without repetition, so no two
(field, value) pairs share an id, except that a behaviour list reuses the id of the entity it
counts: the id of category c is the same in 206 and in 109_14 (likewise 207 / 110_14,
216 / 127_14, 210 / 150_14). That makes the cross fields checkable against the files. Categorical
values are written ``1.0``, weights with 6 significant digits (``ln 2`` is ``0.693147``).

The planted truth
-----------------
CTR logit = intercept
  + item effect (205) + category effect (206) + position effect (301)      [first order]
  + profile effects (sum over the 8 profile fields)                        [first order]
  + ``<u, v> / sqrt(k)``                         [user x item latent interaction]
  + ``G[age 125, category 206]``                 [profile x category interaction]
  + ``w508 + w509 + w702 + sum w853``            [behaviour affinity via the cross fields]
(the affinity as ``affinity_shape: linear``, the default; ``saturating`` is described below)

CVR logit (P(conversion | click)) = intercept + 0.5 * (item + ``<u, v>`` + affinity terms of the
CTR logit: the shared part) + item quality (205) + ``H[consumption 126, category 206]``
+ consumption-II effect (127). Every term is a function of written features, so a model with
per-field embeddings can learn it (the affinity is first order in the cross fields, but an
interaction of user behaviour and item attributes for any model without them).

A pilot sample drawn from the same process (up to 100k rows) scales every term to a fixed
standard deviation (``truth._CTR_TERM_STD`` / ``_CVR_TERM_STD``; the three interaction terms times
``interaction_scale``), so the shares below hold for any config, and calibrates the intercepts so
that the click rate is ``ctr_rate`` and the conversion rate among clicks is ``cvr_rate``.
``click ~ Bernoulli(p_ctr)``; ``conversion ~ Bernoulli(p_cvr)`` only when clicked (never a
click=0, conversion=1 row).

Share of the CTR logit variance, var(term) / var(logit) (the terms are nearly independent; the
shares sum to 1.02): item 0.16, category 0.10, position 0.07, profile 0.05 (first order 0.38);
``<u,v>`` 0.28, age x category 0.16, affinity 0.20 (interactions 0.64). CVR logit: shared CTR
part 0.25, item quality 0.32, consumption x category 0.39, consumption II 0.05;
corr(CTR logit, CVR logit) = 0.39. Reported per run in :class:`SyntheticSummary`. On a 30k-row
sample the best additive function of the first-order fields explains only ~half of the true CTR
logit (in-sample R^2 0.51-0.56).

Default size (300k train / 100k test impressions, 20 per record, 15k / 5k records): CTR 4.4 %,
CVR 7.0 % of clicks (925 / 313 conversions); oracle AUC CTR 0.784, CVR (clicked rows) 0.74-0.77,
CTCVR 0.875. Files: train skeleton 58 MB, train common 110 MB, test 19 MB + 36 MB, truth
7 MB + 2.5 MB (233 MB in all).

Keys beyond the default world
-----------------------------
Real Ali-CCP logs have what the default world lacks: a test period with users and items never
seen in training, long-tail ids, behaviour lists of several hundred ids, and a value-dependent
behaviour effect. The keys below add them. At their defaults the files are byte-for-byte those
written before the keys existed, and the fingerprint leaves them out.

* ``test_new_user_fraction`` (f, in [0, 0.9], default 0): share of the test split's common
  records that belong to a user who exists only in the test period. These users form a pool of
  their own, ``round(n_users * f / (1 - f))`` of them (so a new user owns about as many test
  records as an old one), with their own 101 ids (distinct from every other id) and with
  profiles, activity, topic preferences and latent vectors drawn from the same distributions
  as the old users. A record's user is new with probability f, then drawn by activity among
  the new users. Train never shows them; the old users whose records all fall in test (chance,
  set by ``n_users`` against the number of training records) add to the unseen share.
* ``test_new_item_fraction`` (g, in [0, 0.9], default 0): share of test impressions whose item
  exists only in the test period: a pool of ``max(n_topics, round(n_items * g / (1 - g)))``
  items with their own 205 ids and their own Zipf popularity, drawn like the old items (topic,
  then category, shop, brand and intention nodes from the usual vocabularies, so what the
  model learnt of those transfers; latent vector from the category, own CTR and CVR effects).
  An impression's item is new with probability g, from the same topic the impression drew.
  Behaviour events (and so the lists, which carry attribute ids, never item ids) are drawn from
  the old items only, in both splits, and nothing of the training split changes: its files are
  those of the same config without the new pools.
* ``affinity_shape`` (``linear``, the default, or ``saturating``): with ``saturating`` the
  affinity is ``sum over cross entries of a[e] * c^4 / (c^4 + h[e]^4)``, c the entry's count
  (written as ``ln(1 + c)``) and e its entity (category for 508, shop for 509, brand for 702,
  intention node for 853): a per-entity slope ``a[e] = 1 + N(0, 1)`` (about one entity in six
  lowers the click probability the more the user has seen of it) times a Hill function that
  saturates around a per-entity threshold ``h[e] = median present count of the field (in the
  pilot sample) * exp(0.5 N(0, 1))``, close to a step in the written value. The slopes and
  spreads come from a stream of their own, so the rest of the world stays as with ``linear``.
  In world2 below, per cross entry: the entity alone (presence) explains 59-69 % of the
  variance of the term, the best affine function of the written value per entity 92-94 %,
  one linear function of the written value for all entities 2-36 %.

Long tails and list lengths need no key of their own: ``n_items`` large against the rows with
``item_zipf`` >= 1 makes most items rare, and ``behaviour_events_mean`` sets the list lengths
(each event adds one count to each of the four lists; the lists hold the distinct entities).
:class:`SplitSummary` reports per split the distinct users and items, the mean length of each
list and, for test, the shares of users, records, items and impressions that train never shows.

The second world (``conf/world2``: ``kedro run --env=world2``, artefacts under
``data/world2``): 600k train / 300k test impressions, 15 per record (40,108 / 20,134 records),
40k users, 60k items (Zipf 1.0), 32 topics, 1,200 categories, 10k shops, 6k brands, 4k
intention nodes, 250 behaviour events per record, ``test_new_user_fraction`` 0.3,
``test_new_item_fraction`` 0.1, saturating affinity. Measured: CTR 4.50 % / 4.46 %
(train / test), CVR 6.9 % / 7.1 % of clicks (1,875 / 956 conversions); oracle AUC CTR 0.794 /
0.794, CVR 0.751 / 0.755, CTCVR 0.886 / 0.885; CTR variance shares as in the default world
(affinity 0.20), CVR shared 0.27, item quality 0.36, consumption x category 0.43. Lists
106 / 135 / 130 / 149 ids per record (520 together, 528 common features per record), 9.1
skeleton features per row. Train shows 21,301 users (1.9 records each, median 1) and 49,158 of
the 60k items: median 2 impressions per item, 52 % of them seen at most twice, 79 % at most
5 times, the top 1 % of items 61 % of the impressions. Test: 52.5 % of its 15,368 users
(49.9 % of its records) and 22.8 % of its 40,729 items (12.1 % of its impressions) never appear
in train. Files: train skeleton 126 MB, common 558 MB; test 62 MB + 278 MB; truth 14 MB + 7 MB
(1,046 MB in all), written in 12-19 s. Scaled with ``--params "synthetic.n_train_rows=3000000,
synthetic.n_test_rows=600000,synthetic.n_users=200000,synthetic.n_items=300000"``: 4.4 GB in
69 s, 833 MB peak RSS; test users unseen 51 %, impressions of unseen items 12 %, oracle AUC
CTR 0.801, CVR 0.79, CTCVR 0.917.

Chunking, processes and determinism: randomness is drawn per block of ``BLOCK_COMMONS`` common
records from its own stream, seeded by the block's index, so the bytes depend on the config but
neither on ``chunk_rows`` nor on ``workers``. A split is cut into chunks of whole blocks of about
``chunk_rows`` rows (the truth file's row groups), and ``workers`` processes (a count, or
``auto``: every core; default ``auto``; fewer than four chunks in all are written by the calling
process) write chunks at once, each to part files that the calling process appends in chunk
order. The world is built and calibrated once, in the calling process, and written to a file
that every worker maps read-only (:mod:`.shared`): one copy in memory, however many workers.
Memory per process: the world, one block's text, one chunk's truth and statistics; none of it
grows with the number of rows. Neither key enters the fingerprint.

The Ali-CCP-shaped world (``conf/fullscale``: ``kedro run --env=fullscale``, artefacts under
``data/fullscale``): 42.3M train / 43.0M test impressions, 58 per record, 0.4M users, 4.3M items
(Zipf 1.0), 64 topics, 9,000 categories, 400k shops, 200k brands, 60k intention nodes, 170
behaviour events per record, CTR 3.9 %, conversions 0.02 % of impressions. Measured with the rows
divided by 100 (the users and items kept): 57.4 impressions per record, 509 / 498 list ids per
record (train / test), CTR 3.90 % / 3.91 %, conversions 0.021 % / 0.018 % of impressions
(88 / 77 of them), 380 MB; at full size about 38 GB. Dividing the users and items by 100 too
shortens the lists to ~435 ids (a record's distinct entities grow with the catalogue).
"""

from rec_pipeline.data.aliccp.format import (
    ALL_FIELDS,
    BEHAVIOUR_FIELDS,
    COMMON_FIELDS,
    CROSS_FIELDS,
    PROFILE_FIELDS,
    RAW_FILE_NAMES,
    SKELETON_FIELDS,
    SPLITS,
)
from rec_pipeline.data.synthetic.output import read_marker, write_synthetic
from rec_pipeline.data.synthetic.params import (
    GENERATOR_VERSION,
    MARKER_NAME,
    MAX_FEATURE_ID,
    TRUTH_FILE_NAMES,
    SyntheticConfig,
)
from rec_pipeline.data.synthetic.summary import SplitSummary, SyntheticSummary

__all__ = [
    "ALL_FIELDS",
    "BEHAVIOUR_FIELDS",
    "COMMON_FIELDS",
    "CROSS_FIELDS",
    "GENERATOR_VERSION",
    "MARKER_NAME",
    "MAX_FEATURE_ID",
    "PROFILE_FIELDS",
    "RAW_FILE_NAMES",
    "SKELETON_FIELDS",
    "SPLITS",
    "TRUTH_FILE_NAMES",
    "SplitSummary",
    "SyntheticConfig",
    "SyntheticSummary",
    "read_marker",
    "write_synthetic",
]
