"""Vocabularies, the group split, negative sampling, encoding and the tensor loader."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from rec_pipeline.data import batches
from rec_pipeline.data.batches import Jagged, SplitData
from rec_pipeline.data.counting import count_training_ids
from rec_pipeline.data.encode import (
    CommonIndex,
    SampleEncoding,
    encode_commons,
    encode_samples,
    split_train_rows,
)
from rec_pipeline.data.sampling import (
    keep_prob_for,
    negative_draws,
    sample_negatives,
    training_keep_prob,
    valid_group_mask,
)
from rec_pipeline.data.shards import ShardSet, ShardWriter
from rec_pipeline.data.stats import SplitStats
from rec_pipeline.data.vocab import IdCounter, Vocabulary, vocabulary_frame

SK = ["205", "210"]
CM = ["101", "109_14"]


def _lists(rows: list[list], typ) -> pa.Array:
    return pa.array(rows, pa.list_(typ))


def parsed_samples(rng: np.random.Generator, n: int, n_groups: int) -> pa.Table:
    groups = np.sort(rng.integers(0, n_groups, n))
    click = (rng.random(n) < 0.2).astype(np.int8)
    conv = (click & (rng.random(n) < 0.3)).astype(np.int8)
    item = [[int(x)] for x in rng.integers(10**9, 10**9 + 50, n)]
    multi = [list(rng.integers(5, 40, rng.integers(0, 4)).tolist()) for _ in range(n)]
    return pa.table(
        {
            "sample_id": pa.array(np.arange(n, dtype=np.int64)),
            "click": pa.array(click),
            "conversion": pa.array(conv),
            "common_feature_index": pa.array([f"g{g:06d}".encode() for g in groups], pa.binary()),
            "id_205": _lists(item, pa.int64()),
            "w_205": _lists([[1.0]] * n, pa.float32()),
            "id_210": _lists(multi, pa.int64()),
            "w_210": _lists([[0.5] * len(m) for m in multi], pa.float32()),
        }
    )


def parsed_commons(rng: np.random.Generator, n_groups: int) -> pa.Table:
    users = [[int(u)] for u in rng.integers(1, 30, n_groups)]
    beh = [list(rng.integers(100, 200, rng.integers(0, 12)).tolist()) for _ in range(n_groups)]
    return pa.table(
        {
            "common_feature_index": pa.array(
                [f"g{g:06d}".encode() for g in range(n_groups)], pa.binary()
            ),
            "id_101": _lists(users, pa.int64()),
            "w_101": _lists([[1.0]] * n_groups, pa.float32()),
            "id_109_14": _lists(beh, pa.int64()),
            "w_109_14": _lists([rng.random(len(b)).tolist() for b in beh], pa.float32()),
        }
    )


def _vocabulary(samples: pa.Table, commons: pa.Table) -> Vocabulary:
    """Every training id of the four test fields (min count 1)."""
    counter = count_training_ids([samples], [commons], SK, CM, valid_fraction=0.01, seed=1)
    names = ["f0_205", "f0_210", "f1_101", "f1_109_14"]
    return Vocabulary(vocabulary_frame(counter, names, min_count=1, max_size={}, hash_buckets={}))


# ------------------------------------------------------------------------------ vocabulary
def test_vocabulary_min_count_oov_and_order():
    c = IdCounter()
    c.add("f0_205", np.array([7, 7, 7, 9, 9, 3, 11], np.int64))
    c.add("f0_205", np.array([3, 3, 12], np.int64))  # merged across chunks
    frame = vocabulary_frame(c, ["f0_205"], min_count=2, max_size={}, hash_buckets={})
    # counts: 3->3, 7->3, 9->2; 11 and 12 seen once: dropped. Ties by raw id.
    assert frame["raw_id"].tolist() == [3, 7, 9]
    assert frame["index"].tolist() == [1, 2, 3]
    v = Vocabulary(frame)
    assert v.size("f0_205") == 4
    got = v.lookup("f0_205", np.array([9, 3, 11, 7, 10**10], np.int64))
    assert got.tolist() == [3, 1, 0, 2, 0]  # unseen and rare ids -> 0 (OOV)


def test_vocabulary_cap_and_hashing():
    c = IdCounter()
    c.add("f0_205", np.repeat(np.arange(10), np.arange(10, 0, -1)))
    frame = vocabulary_frame(c, ["f0_205"], min_count=1, max_size={"f0_205": 4}, hash_buckets={})
    assert frame["raw_id"].tolist() == [0, 1, 2]  # 3 ids + index 0 = 4 rows
    v = Vocabulary(frame, hash_buckets={"f1_101": 16})
    h = v.lookup("f1_101", np.arange(10_000, dtype=np.int64) * 7919)
    assert h.min() >= 1 and h.max() <= 16 and v.size("f1_101") == 17
    assert len(np.unique(h)) == 16  # every bucket used
    assert not frame["field"].eq("f1_101").any()


def test_vocabulary_fingerprint_changes_with_content():
    c = IdCounter()
    c.add("f0_205", np.array([1, 2, 2], np.int64))
    a = Vocabulary(vocabulary_frame(c, ["f0_205"], min_count=1, max_size={}, hash_buckets={}))
    b = Vocabulary(vocabulary_frame(c, ["f0_205"], min_count=2, max_size={}, hash_buckets={}))
    assert a.fingerprint != b.fingerprint


# ------------------------------------------------------------------------ split + sampling
def test_group_split_is_deterministic_and_leaks_no_group():
    rng = np.random.default_rng(0)
    t = parsed_samples(rng, 20_000, 2_000)
    m1 = valid_group_mask(t.column("common_feature_index"), 0.2, seed=5)
    # Different chunking gives the same assignment.
    m2 = np.concatenate(
        [
            valid_group_mask(t.slice(s, 3000).column("common_feature_index"), 0.2, 5)
            for s in range(0, 20_000, 3000)
        ]
    )
    assert np.array_equal(m1, m2)
    keys = np.asarray(t.column("common_feature_index").to_pylist(), dtype=object)
    assert not set(keys[m1]) & set(keys[~m1])
    n_valid_groups = len(set(keys[m1]))
    assert abs(n_valid_groups / 2000 - 0.2) < 0.035  # ~4 sigma of a binomial(2000, 0.2)
    assert not np.array_equal(m1, valid_group_mask(t.column("common_feature_index"), 0.2, 6))


def test_negative_sampling_keeps_fraction_and_only_training_negatives():
    rng = np.random.default_rng(1)
    t = parsed_samples(rng, 60_000, 3_000)
    train, valid, draws = split_train_rows(t, valid_fraction=0.25, seed=3, chunk=0)
    click = t.column("click").to_numpy()
    assert not (train & valid).any() and (train | valid).all()
    # The draws are the generator's stream over the chunk's negatives, in row order.
    neg = click == 0
    expected = np.random.default_rng([3, 0]).random(int(neg.sum()))
    assert np.array_equal(draws[neg], expected) and (draws[~neg] == 0).all()
    table = t.filter(pa.array(train)).append_column("keep_draw", pa.array(draws[train]))
    (kept, report), *_ = list(sample_negatives([table], 0.4))
    tr_click = table.column("click").to_numpy()
    assert (kept.column("click").to_numpy() == 1).sum() == (tr_click == 1).sum()  # all positives
    n_neg = int((tr_click == 0).sum())
    frac = report["negatives_kept"] / n_neg
    assert report["negatives_seen"] == n_neg and abs(frac - 0.4) < 5 * np.sqrt(0.24 / n_neg)
    assert report["kept"]["rows"] == kept.num_rows and "keep_draw" not in kept.column_names
    # A smaller keep probability keeps a subset of a larger one's rows.
    (small, _), *_ = list(sample_negatives([table], 0.2))
    assert set(small.column("sample_id").to_pylist()) < set(kept.column("sample_id").to_pylist())
    # Same seed and chunk: same draws; another chunk index: different draws.
    assert np.array_equal(negative_draws(click, 3, 0), draws)
    assert not np.array_equal(negative_draws(click, 3, 1), draws)


@pytest.mark.parametrize(
    ("keep", "at_least", "negatives", "want"),
    [
        (0.4, None, 1_000, 0.4),  # the share alone
        (0.4, 100, 1_000, 0.4),  # the share keeps more than the floor asks
        (0.4, 700, 1_000, 0.7),  # raised to keep the floor
        (0.4, 5_000, 1_000, 1.0),  # fewer negatives than the floor: all of them
        (0.4, 700, 0, 0.4),  # nothing to sample
    ],
)
def test_keep_prob_floor(keep, at_least, negatives, want):
    assert keep_prob_for(keep, at_least, negatives) == pytest.approx(want)


def test_keep_floor_keeps_about_that_many_negatives():
    """The raised rate, read off the encode report, keeps about the floor's count of the
    split's negatives through the real sampler."""
    rng = np.random.default_rng(5)
    t = parsed_samples(rng, 40_000, 2_000)
    train, _, draws = split_train_rows(t, valid_fraction=0.2, seed=3, chunk=0)
    table = t.filter(pa.array(train)).append_column("keep_draw", pa.array(draws[train]))
    click = table.column("click").to_numpy()
    report = {"splits": {"train_all": {"rows": table.num_rows, "clicks": int(click.sum())}}}
    n_neg = int((click == 0).sum())
    at_least = n_neg * 3 // 4
    rate = training_keep_prob(0.4, at_least, report)
    (_, sampled), *_ = list(sample_negatives([table], rate))
    assert sampled["keep_prob"] == pytest.approx(0.75, abs=1e-4)
    assert abs(sampled["negatives_kept"] - at_least) < 5 * np.sqrt(n_neg * 0.75 * 0.25)
    assert training_keep_prob(0.4, n_neg // 10, report) == 0.4


def test_negative_sampling_in_workers_keeps_the_same_rows_and_report(tmp_path):
    """Five shards sampled in two worker processes (part files moved into place) against the
    same shards sampled in this process: identical rows in the same order, identical reports."""
    rng = np.random.default_rng(4)
    writer = ShardWriter(tmp_path / "train_all")
    writer.reset()
    for chunk in range(5):
        t = parsed_samples(rng, 3_000, 300)
        click = t.column("click").to_numpy()
        writer.write(t.append_column("keep_draw", pa.array(negative_draws(click, 3, chunk))))
    shards = ShardSet(tmp_path / "train_all")
    outputs = {}
    for workers in (1, 2):
        out = ShardWriter(tmp_path / f"sampled_{workers}")
        out.reset()
        report = None
        for rows, so_far in sample_negatives(
            shards, 0.3, staging=tmp_path / "staging", workers=workers
        ):
            out.write(rows)  # a worker's part file is moved before the next one is asked for
            report = so_far
        outputs[workers] = (ShardSet(tmp_path / f"sampled_{workers}").read(), report)
    (one, one_report), (two, two_report) = outputs[1], outputs[2]
    assert two.equals(one) and two_report == one_report
    assert one_report["rows_in"] == 15_000 and one.num_rows == one_report["kept"]["rows"]
    assert not list((tmp_path / "staging").iterdir())  # the workers' folder is gone


def test_vocabulary_counts_training_split_only():
    rng = np.random.default_rng(2)
    s = parsed_samples(rng, 5_000, 500)
    c = parsed_commons(rng, 500)
    counter = count_training_ids([s], [c], SK, CM, valid_fraction=0.3, seed=9)
    valid = valid_group_mask(s.column("common_feature_index"), 0.3, 9)
    items = np.array([x[0] for x in s.column("id_205").to_pylist()])
    expect_k, expect_c = np.unique(items[~valid], return_counts=True)
    assert np.array_equal(counter.field("f0_205")[0], expect_k)
    assert np.array_equal(counter.field("f0_205")[1], expect_c)
    cvalid = valid_group_mask(c.column("common_feature_index"), 0.3, 9)
    assert counter.field("f1_101")[1].sum() == (~cvalid).sum()


# --------------------------------------------------------------------------------- encoding
def test_encode_links_commons_and_counts_missing_records():
    rng = np.random.default_rng(3)
    commons = parsed_commons(rng, 50)
    samples = parsed_samples(rng, 400, 60)  # groups 50..59 have no common record
    vocab = _vocabulary(samples, commons)
    idx = CommonIndex()
    idx.extend(commons.column("common_feature_index"))
    enc_c = encode_commons(commons, CM, vocab, SplitStats())
    st, enc = SplitStats(), SampleEncoding()
    out = encode_samples(samples, SK, vocab, idx, st, enc)
    keys = np.asarray(samples.column("common_feature_index").to_pylist(), dtype=object)
    groups = np.array([int(k[1:]) for k in keys])
    assert enc.missing_common == (groups >= 50).sum() > 0
    assert out.num_rows == (groups < 50).sum() == st.rows
    # common_row points at the right record
    rows = out.column("common_row").to_numpy()
    assert np.array_equal(rows, groups[groups < 50])
    assert enc_c.column("common_feature_index").to_pylist()[rows[0]] == keys[groups < 50][0]
    # ids are vocabulary rows, lists keep their lengths and weights
    raw = samples.filter(pa.array(groups < 50)).column("id_210").to_pylist()
    got = out.column("id_210").to_pylist()
    assert [len(r) for r in raw] == [len(g) for g in got]
    flat = np.concatenate([np.asarray(r, np.int64) for r in raw if r])
    assert np.array_equal(vocab.lookup("f0_210", flat), np.concatenate([g for g in got if g]))


# ------------------------------------------------------------------------------ the loader
def _write(tmp_path, name, table) -> ShardSet:
    w = ShardWriter(tmp_path / name)
    w.reset()
    half = table.num_rows // 2
    w.write(table.slice(0, half))
    w.write(table.slice(half))
    return ShardSet(tmp_path / name)


def _encoded(tmp_path):
    rng = np.random.default_rng(4)
    commons = parsed_commons(rng, 40)
    samples = parsed_samples(rng, 300, 40)
    vocab = _vocabulary(samples, commons)
    idx = CommonIndex()
    idx.extend(commons.column("common_feature_index"))
    ec = encode_commons(commons, CM, vocab, SplitStats())
    es = encode_samples(samples, SK, vocab, idx, SplitStats(), SampleEncoding())
    return _write(tmp_path, "s", es), _write(tmp_path, "c", ec), es, ec


def _row_values(table: pa.Table, fields: list[str], r: int):
    """Brute force: (ids, field positions, weights) of row r, fields in order."""
    ids, fl, w = [], [], []
    for j, f in enumerate(fields):
        a = table.column(f"id_{f}")[r].as_py()
        ids += a
        fl += [j] * len(a)
        w += table.column(f"w_{f}")[r].as_py()
    return ids, fl, w


@pytest.mark.parametrize("threads", [1, 3])
def test_jagged_interleave_matches_row_loop(tmp_path, threads, monkeypatch):
    monkeypatch.setattr(batches, "LOAD_THREADS", threads)
    _, _, table, _ = _encoded(tmp_path)
    writer = ShardWriter(tmp_path / "pieces")
    writer.reset()
    for start in range(0, table.num_rows, 70):  # several shards, loaded by several threads
        writer.write(table.slice(start, 70))
    shards = ShardSet(tmp_path / "pieces")
    assert len(shards.files) == 5
    jag, extra = Jagged.from_shards(shards, SK, extra=("sample_id",))
    assert np.array_equal(extra["sample_id"], table.column("sample_id").to_numpy())
    for r in range(table.num_rows):
        a, b = jag.row_ptr[r].item(), jag.row_ptr[r + 1].item()
        ids, fl, w = _row_values(table, SK, r)
        assert jag.ids[a:b].tolist() == ids
        assert jag.fields[a:b].tolist() == fl
        assert np.allclose(jag.weights[a:b].numpy(), w)


def test_batch_gather_matches_brute_force(tmp_path):
    shards, cshards, table, ctable = _encoded(tmp_path)
    commons, _ = Jagged.from_shards(cshards, CM)
    data = SplitData(shards, commons, SK, "cpu")
    rows = np.array([5, 17, 3, 3, 250, 0], np.int64)
    b = data.batch(rows)
    assert b.click.tolist() == table.column("click").to_numpy()[rows].astype(float).tolist()
    for i, r in enumerate(rows):
        m = b.sk_rows == i
        ids, fl, w = _row_values(table, SK, int(r))
        assert b.sk_ids[m].tolist() == ids and b.sk_fields[m].tolist() == fl
        assert np.allclose(b.sk_weights[m].numpy(), w)
        crow = table.column("common_row")[int(r)].as_py()
        u = b.cm_inverse[i].item()
        cm = b.cm_rows == u
        cids, cfl, cw = _row_values(ctable, CM, crow)
        assert b.cm_ids[cm].tolist() == cids and b.cm_fields[cm].tolist() == cfl
        assert np.allclose(b.cm_weights[cm].numpy(), cw)
    # distinct common records are pooled once
    assert len(torch.unique(b.cm_rows)) == len(set(table.column("common_row").to_numpy()[rows]))


def test_iter_batches_covers_every_row_once(tmp_path):
    shards, cshards, table, _ = _encoded(tmp_path)
    commons, _ = Jagged.from_shards(cshards, CM)
    data = SplitData(shards, commons, SK, "cpu")
    seen = torch.cat(
        [b.index for b in data.iter_batches(64, shuffle=True, generator=np.random.default_rng(0))]
    )
    assert sorted(seen.tolist()) == list(range(table.num_rows))
    resumed = torch.cat(
        [
            b.index
            for b in data.iter_batches(
                64, shuffle=True, generator=np.random.default_rng(0), start=2
            )
        ]
    )
    assert torch.equal(resumed, seen[128:])


@pytest.mark.parametrize("n", [0])
def test_empty_split_loads(tmp_path, n):
    shards, cshards, table, _ = _encoded(tmp_path)
    w = ShardWriter(tmp_path / "empty")
    w.reset()
    w.write(table.slice(0, 0))
    commons, _ = Jagged.from_shards(cshards, CM)
    data = SplitData(ShardSet(tmp_path / "empty"), commons, SK, "cpu")
    assert len(data) == n and list(data.iter_batches(8)) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_planned_batches_on_cuda_match_the_cpu(tmp_path):
    shards, cshards, table, _ = _encoded(tmp_path)
    commons, _ = Jagged.from_shards(cshards, CM)
    cpu = SplitData(shards, commons, SK, "cpu")
    gpu = SplitData(shards, commons, SK, "cuda")
    order = np.random.default_rng(0).permutation(len(cpu))
    for a, b in zip(
        cpu.iter_batches(37, shuffle=True, generator=np.random.default_rng(1)),
        gpu.iter_batches(37, shuffle=True, generator=np.random.default_rng(1)),
        strict=True,
    ):
        for name in (
            "sk_ids",
            "sk_fields",
            "sk_weights",
            "sk_rows",
            "cm_ids",
            "cm_inverse",
            "click",
        ):
            assert torch.equal(getattr(a, name), getattr(b, name).cpu()), name
    assert len(order) == table.num_rows
