"""torch-rechub 0.9.0 peers: ESMM and MMOE, configured as the library's Ali-CCP example does.

The example (``examples/ranking/run_ali_ccp_multi_task.py`` in the torch-rechub repository)
trains with the library's ``MTLTrainer``: Adam, lr 1e-3, weight decay 1e-4, batch 1024, 1 epoch.

* **ESMM** (``torch_rechub.models.multi_task.ESMM``): every field a 16-dim sparse feature, split
  into the example's "user" and "item" groups (the item group: 129, 205, 206, 207, 210, 216;
  ESMM concatenates both anyway), towers [16, 8]. Labels ``[cvr, ctr, ctcvr]``; the trainer
  trains ESMM on the CTR and CTCVR losses only. Its outputs are ``[p_cvr, p_ctr, p_ctcvr]``: CVR
  AUC ranks the CVR tower's own ``p_cvr``, CTCVR ranks ``p_ctr * p_cvr``.
* **MMOE** (``torch_rechub.models.multi_task.MMOE``): every field a 4-dim sparse feature plus
  the cross values as dense features, 8 experts of [16], towers [8]. Labels ``[conversion,
  click]`` over all rows, as in the example (its "cvr" task is conversion over every impression),
  so ``p_cvr = p_conversion / p_ctr`` and CTCVR ranks ``p_conversion``.

The example's data has one id per field (its preprocessing keeps one); on the peers' encoding
the multi-valued fields (behaviour lists, 210 / 853) are the library's ``SequenceFeature`` with
``mean`` pooling over the known ids (``padding_idx`` 0), the library's own way to feed them.
``MTLTrainer`` keeps the weights with the best validation AUC of the first task (early stopping,
saved under a temporary folder); with one epoch that is the trained model.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time

import numpy as np
import torch

ITEM_FIELDS = ("129", "205", "206", "207", "210", "216")  # the example's item group


def _features(meta: dict, emb_dim: int, with_dense: bool):
    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature

    lay, vs = meta["layout"], meta["vocab_size"]
    feats = {f"s_{f}": SparseFeature(f"s_{f}", vs[f], embed_dim=emb_dim) for f in lay["single"]}
    for f in lay["multi"]:
        feats[f"m_{f}"] = SequenceFeature(
            f"m_{f}", vs[f], embed_dim=emb_dim, pooling="mean", padding_idx=0
        )
    dense = [DenseFeature(f"d_{f}") for f in lay["dense"]] if with_dense else []
    return feats, dense


def _inputs(split: dict, meta: dict, with_dense: bool) -> dict[str, np.ndarray]:
    lay = meta["layout"]
    x = {f"s_{f}": split["single"][:, j].astype(np.int64) for j, f in enumerate(lay["single"])}
    x.update(
        {f"m_{f}": split["multi"][:, j, :].astype(np.int64) for j, f in enumerate(lay["multi"])}
    )
    if with_dense:
        x.update(
            {f"d_{f}": split["dense"][:, j].astype(np.float32) for j, f in enumerate(lay["dense"])}
        )
    return x


def _labels(kind: str, split: dict) -> np.ndarray:
    click = split["click"].astype(np.float32)
    conv = split["conversion"].astype(np.float32)
    if kind == "esmm":  # [cvr, ctr, ctcvr]; ESMM's trainer never reads the first
        return np.stack([conv, click, conv * click], axis=1)
    return np.stack([conv, click], axis=1)  # the example's MMOE: [purchase, click]


@torch.no_grad()
def _predict(model, kind: str, x: dict, device: str, batch_size: int = 65536):
    """(p_ctr, p_cvr) float64 arrays."""
    model.eval()
    n = next(iter(x.values())).shape[0]
    ctr, cvr = [], []
    for i in range(0, n, batch_size):
        batch = {k: torch.from_numpy(v[i : i + batch_size]).to(device) for k, v in x.items()}
        out = model(batch).double().cpu()
        if kind == "esmm":  # [p_cvr, p_ctr, p_ctcvr]
            cvr.append(out[:, 0])
            ctr.append(out[:, 1])
        else:  # [p_conversion, p_ctr]
            ctr.append(out[:, 1])
            cvr.append(out[:, 0] / out[:, 1].clamp_min(1e-12))
    return torch.cat(ctr).numpy(), torch.cat(cvr).numpy()


def train_rechub(kind: str, data, *, seed: int, device: str, epochs: int = 1) -> dict:
    """Train torch-rechub's ESMM or MMOE (``kind`` 'esmm' | 'mmoe') and predict the test split.

    ``data`` is the peers' :class:`aliccp_reader.Encoded`.
    """
    from torch_rechub.models.multi_task import ESMM, MMOE
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    torch.manual_seed(seed)
    meta, splits = data.meta, data.splits
    if kind == "esmm":
        feats, _ = _features(meta, 16, with_dense=False)
        item = [f for name, f in feats.items() if name[2:] in ITEM_FIELDS]
        user = [f for name, f in feats.items() if name[2:] not in ITEM_FIELDS]
        model = ESMM(user, item, cvr_params={"dims": [16, 8]}, ctr_params={"dims": [16, 8]})
        task_types, with_dense = ["classification"] * 3, False
    elif kind == "mmoe":
        feats, dense = _features(meta, 4, with_dense=True)
        model = MMOE(
            [*feats.values(), *dense],
            ["classification"] * 2,
            8,
            expert_params={"dims": [16]},
            tower_params_list=[{"dims": [8]}, {"dims": [8]}],
        )
        task_types, with_dense = ["classification"] * 2, True
    else:
        raise ValueError(kind)
    x = {s: _inputs(splits[s], meta, with_dense) for s in splits}
    dg = DataGenerator(x["train"], _labels(kind, splits["train"]))
    train_dl, valid_dl, _ = dg.generate_dataloader(
        x_val=x["valid"],
        y_val=_labels(kind, splits["valid"]),
        x_test=x["valid"],
        y_test=_labels(kind, splits["valid"]),
        batch_size=1024,
    )
    dev = "cuda:0" if device == "cuda" else "cpu"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as save_dir, contextlib.redirect_stdout(sys.stderr):
        trainer = MTLTrainer(
            model,
            task_types=task_types,
            optimizer_params={"lr": 1e-3, "weight_decay": 1e-4},
            n_epoch=epochs,
            earlystop_patience=30,
            device=dev,
            model_path=save_dir,
        )
        trainer.fit(train_dl, valid_dl)
    train_s = time.perf_counter() - t0
    t_pred = time.perf_counter()
    p_ctr, p_cvr = _predict(trainer.model, kind, x["test"], dev)
    return {
        "sample_id": splits["test"]["sample_id"],
        "p_ctr": p_ctr,
        "p_cvr": p_cvr,
        "train_s": train_s,
        "predict_s": time.perf_counter() - t_pred,
        "total_s": time.perf_counter() - t0,
    }
