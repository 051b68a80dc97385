"""``embedding.l2_reg``: an L2 penalty on exactly the table rows a batch reads."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from rec_pipeline.config import load_config
from rec_pipeline.model.embedding import FusedFieldEmbedding
from rec_pipeline.train.losses import compute_losses

SK, CM = ["f0_a", "f0_b"], ["f1_u"]
VOCAB = {"f0_a": 7, "f0_b": 5, "f1_u": 4}


def _batch() -> SimpleNamespace:
    """Two rows; row 0 reads a:{3, 3}, b:{1}; row 1 reads a:{6}; one common record u:{2, 3}."""
    t = torch.tensor
    return SimpleNamespace(
        sk_ids=t([3, 3, 1, 6]),
        sk_fields=t([0, 0, 1, 0]),
        sk_weights=t([1.0, 0.5, 1.0, 1.0]),
        sk_rows=t([0, 0, 0, 1]),
        cm_ids=t([2, 3]),
        cm_fields=t([0, 0]),
        cm_weights=t([1.0, 1.0]),
        cm_rows=t([0, 0]),
        cm_inverse=t([0, 0]),
    )


def _embedding(touched_l2: bool = True) -> FusedFieldEmbedding:
    torch.manual_seed(0)
    dims = {f: 3 for f in VOCAB}
    return FusedFieldEmbedding(SK, CM, VOCAB, dims, sparse=True, touched_l2=touched_l2)


def test_penalty_is_the_sum_of_squares_of_each_distinct_row_read_once():
    emb = _embedding().train()
    out = emb(_batch())
    sk, cm = emb.skeleton_table.detach().double(), emb.common_table.detach().double()
    # Brute force: skeleton rows a:3, a:6 and b:1 (b starts after a's 7 rows); common u:2, u:3.
    want = sum(float(sk[r].pow(2).sum()) for r in (3, 6, 7 + 1))
    want += sum(float(cm[r].pow(2).sum()) for r in (2, 3))
    assert abs(float(out.touched_l2) - want) < 1e-6
    out.touched_l2.backward()
    grad = emb.skeleton_table.grad
    assert grad.is_sparse  # the penalty keeps the tables' gradients sparse
    dense = grad.to_dense()
    assert set(dense.abs().sum(1).nonzero().flatten().tolist()) == {3, 6, 8}
    torch.testing.assert_close(dense[3], 2 * emb.skeleton_table.detach()[3])


def test_no_penalty_in_eval_mode_or_when_off():
    assert _embedding().eval()(_batch()).touched_l2 is None
    assert _embedding(touched_l2=False).train()(_batch()).touched_l2 is None


def test_the_loss_adds_l2_reg_times_the_penalty():
    cfg = load_config({"embedding": {"l2_reg": 1e-3}})
    logits = {"ctr": torch.zeros(2), "cvr": torch.zeros(2)}
    labels = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    out = SimpleNamespace(logits=logits, gates={}, training=True, embedding_l2=torch.tensor(5.0))
    pw = {"ctr": 1.0, "ctcvr": 1.0}
    with_l2 = compute_losses(out, *labels, step=0, cfg=cfg, pos_weight=pw)
    out.embedding_l2 = None
    without = compute_losses(out, *labels, step=0, cfg=cfg, pos_weight=pw)
    assert float(with_l2.components["loss_embedding_l2"]) == 5.0
    assert abs(float(with_l2.total - without.total) - 5e-3) < 1e-7
    assert "loss_embedding_l2" not in without.components
