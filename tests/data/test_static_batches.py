"""Fixed-shape batches: the model sees exactly the ordinary batch; padding is inert."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kedro_project import deep_merge, encoded

from rec_pipeline.config import load_config
from rec_pipeline.data.metadata import DatasetMetadata
from rec_pipeline.data.static_batches import StaticBatches, full_batches, needed_sizes
from rec_pipeline.model.builder import build_model
from rec_pipeline.train.loop import model_meta_from_metadata

BATCH = 256


@pytest.fixture(scope="module")
def setup(encoded_project):
    params, meta, splits = encoded(encoded_project)
    train = splits["train"]
    cfg = load_config(deep_merge(params, {"runtime": {"device": "cpu"}}))
    torch.manual_seed(0)
    model = build_model(cfg, model_meta_from_metadata(DatasetMetadata.coerce(meta))).eval()
    plan = train.epoch_plan(BATCH, shuffle=True, generator=np.random.default_rng(3))
    return train, model, plan


def test_static_batches_give_the_model_the_ordinary_batches(setup):
    train, model, plan = setup
    n_full = full_batches(plan, BATCH)
    assert n_full == len(train) // BATCH
    sizes = needed_sizes(plan, BATCH, n_full)
    assert sizes.sk_values >= plan.sk_total.max() and sizes.cm_values >= plan.cm_total.max()
    static = StaticBatches(train, sizes, n_full)
    static.load(plan, start=1)
    for i in (1, 2, n_full - 1):
        static.counter.fill_(i)
        got, want = static.next(), train.planned_batch(plan, i)
        assert int(static.counter) == i + 1
        assert got.sk_ids.shape[0] == sizes.sk_values and got.cm_ids.shape[0] == sizes.cm_values
        for name in ("click", "conversion", "cm_inverse", "index"):
            assert torch.equal(getattr(got, name), getattr(want, name)), name
        n_sk, n_cm = want.sk_ids.shape[0], want.cm_ids.shape[0]
        for side, n in (("sk", n_sk), ("cm", n_cm)):
            for part in ("ids", "fields", "weights", "rows"):
                real = getattr(got, f"{side}_{part}")[:n]
                assert torch.equal(real, getattr(want, f"{side}_{part}")), (side, part)
            # Padding: weight 0, the padding row B, a repeat of the last real lookup.
            assert (getattr(got, f"{side}_weights")[n:] == 0).all()
            assert (getattr(got, f"{side}_rows")[n:] == BATCH).all()
            assert (getattr(got, f"{side}_ids")[n:] == getattr(want, f"{side}_ids")[-1]).all()
        with torch.no_grad():
            a, b = model(got), model(want)
        for task in a.logits:
            assert torch.equal(a.logits[task], b.logits[task])
        lookups = model.embedding.lookups(got)
        assert [float(m.sum()) for _, m in lookups] == [n_sk, n_cm]


def test_the_gather_traces_whole_and_gives_the_same_batches(setup):
    """``runtime.compile`` compiles :meth:`StaticBatches.gather`: it must trace as one graph
    (no break: every shape is fixed) and give the written code's tensors (traced and run unfused
    here, fused by inductor on a GPU)."""
    train, _, plan = setup
    n_full = full_batches(plan, BATCH)
    static = StaticBatches(train, needed_sizes(plan, BATCH, n_full), n_full)
    static.load(plan, start=0)
    traced = torch.compile(static.gather, fullgraph=True, dynamic=False, backend="aot_eager")
    for i in (0, 3, n_full - 1):
        index = torch.tensor([i])
        got, want = traced(index), static.gather(index)
        assert len(got) == len(want) == 12
        for a, b in zip(got, want, strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)
