"""embedding.oov_dropout: chosen fields' ids go to the OOV row at their rate, in training only."""

from __future__ import annotations

import pytest
import torch
from kedro_project import deep_merge, encoded

from rec_pipeline.config import ConfigError, load_config
from rec_pipeline.data.batches import Batch
from rec_pipeline.train.loop import Trainer
from rec_pipeline.train.oov_dropout import OOVDropout


def _batch(n: int = 40_000) -> Batch:
    gen = torch.Generator().manual_seed(0)
    fields = torch.randint(0, 3, (n,), generator=gen)
    ids = torch.randint(1, 50, (n,), generator=gen)
    zeros = torch.zeros(n)
    return Batch(
        sk_ids=ids,
        sk_fields=fields,
        sk_weights=zeros + 1,
        sk_rows=torch.arange(n),
        cm_ids=ids.clone(),
        cm_fields=fields % 2,
        cm_weights=zeros + 1,
        cm_rows=torch.arange(n),
        cm_inverse=torch.arange(n),
        click=zeros,
        conversion=zeros,
        index=torch.arange(n),
    )


def test_each_field_is_dropped_at_its_own_rate_and_others_never():
    torch.manual_seed(1)
    batch = _batch()
    rates = {"f0_b": 0.3, "f1_y": 0.1}
    out = OOVDropout(rates, ["f0_a", "f0_b", "f0_c"], ["f1_x", "f1_y"], torch.device("cpu"))(batch)
    for ids, before, fields, names in (
        (out.sk_ids, batch.sk_ids, batch.sk_fields, ["f0_a", "f0_b", "f0_c"]),
        (out.cm_ids, batch.cm_ids, batch.cm_fields, ["f1_x", "f1_y"]),
    ):
        for position, name in enumerate(names):
            sel = fields == position
            dropped = (ids[sel] == 0).double().mean().item()
            rate = rates.get(name, 0.0)
            # Binomial: 5 standard deviations over ~13k draws.
            assert dropped == pytest.approx(
                rate, abs=5 * (rate * (1 - rate) / int(sel.sum())) ** 0.5
            )
            kept = ids[sel] != 0
            assert torch.equal(ids[sel][kept], before[sel][kept])


def test_no_rates_leave_the_batch_untouched():
    batch = _batch(100)
    assert OOVDropout({}, ["f0_a"], ["f1_x"], torch.device("cpu"))(batch) is batch


@pytest.fixture(scope="module")
def data(encoded_project):
    params, meta, splits = encoded(encoded_project)
    return params, meta, splits["train"], splits["valid"]


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_training_fits_the_oov_row_of_a_dropped_field(data, mode):
    params, meta, train, valid = data
    over = {
        "runtime": {"device": "cpu", "step_mode": mode, "max_train_steps": 3, "save_last": False},
        "embedding": {"oov_dropout": {"f0_205": 0.5}},
    }
    trainer = Trainer(load_config(deep_merge(params, over)), meta, train, valid)
    emb = trainer.model.embedding
    row = int(emb.sk_row_offset[emb.skeleton_fields.index("f0_205")])  # the field's OOV row
    before = emb.skeleton_table[row].detach().clone()
    trainer.fit()
    assert not torch.equal(emb.skeleton_table[row].detach(), before)


def test_bad_rates_and_fields_are_named_by_key():
    with pytest.raises(ConfigError, match=r"embedding\.oov_dropout\.f0_205.*\[0, 1\)"):
        load_config({"embedding": {"oov_dropout": {"f0_205": 1.0}}})
    with pytest.raises(ConfigError, match=r"embedding\.oov_dropout\.f9_1.*field name"):
        load_config({"embedding": {"oov_dropout": {"f9_1": 0.1}}})
