"""DeepCTR-Torch 0.3.0 peers: ESMM and MMOE, untuned, on the peers' own encoding.

Both models are built the way the library's documentation shows: a ``SparseFeat`` per
single-valued field, a ``VarLenSparseFeat`` (``maxlen`` ids, ``combiner='mean'``, id 0 masked)
per multi-valued field and, unless disabled, a ``DenseFeat`` per cross value (508 / 509 / 702).
Settings: embedding dim 8, ``torch.optim.Adam(lr=1e-3)``, batch 1024, tower DNNs [256, 128],
1 epoch; every other argument is the library default (``init_std=1e-4``, L2 1e-5 on the
embeddings, no dropout, no batch norm; MMOE: 3 experts of [256, 128], gates [64]).

Tasks and our metric definitions
--------------------------------
* **ESMM** (``deepctr_torch.models.multitask.ESMM``): outputs ``[p_ctr, p_ctr * p_cvr]`` and is
  trained with two BCE losses on ``[click, conversion]`` over all rows (the ESMM objective,
  CTCVR label = conversion). ``p_cvr`` is the CVR tower's own output, read from the second call
  of the model's shared ``PredictionLayer`` (a forward hook), so CVR AUC ranks the tower's
  probability on the clicked rows and CTCVR ranks ``p_ctr * p_cvr`` (the model's second output).
* **MMOE** (``deepctr_torch.models.multitask.MMOE``) has independent binary tasks over the same
  rows. Default (``task2='cvr'``): tasks ``('ctr', 'cvr')``, the CVR task's BCE only on clicked
  rows (a masked loss passed to ``compile``), so ``p_cvr`` is P(conversion | click) trained on
  clicked rows only (no ESMM coupling), and CTCVR is reported as ``p_ctr * p_cvr``. With
  ``task2='ctcvr'`` (the library's default task names) the second task is conversion over all
  rows; then ``p_cvr = p_ctcvr / p_ctr`` and the CTCVR score is again ``p_ctr * p_cvr``.

With more than one epoch, the weights of the epoch with the best validation primary AUC are kept.

Import: ``deepctr_torch/__init__.py`` starts a thread that asks PyPI for the latest version
(with ``requests``, which the package does not declare). :func:`import_deepctr` imports the
package with that check replaced by a no-op, so nothing goes to the network and ``requests``
is not needed.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.peers.metrics import task_aucs

MAX_FLOAT_ID = 1 << 24  # DeepCTR packs every input into one float32 tensor


def import_deepctr():
    """``deepctr_torch`` (0.3.0), imported without its network version check."""
    if "deepctr_torch" not in sys.modules:
        stub = types.ModuleType("deepctr_torch.utils")
        stub.check_version = lambda version: None
        sys.modules["deepctr_torch.utils"] = stub
    import deepctr_torch

    version = getattr(deepctr_torch, "__version__", "?")
    if version != "0.3.0":
        print(f"[peers] warning: deepctr-torch {version} (0.3.0 expected)", file=sys.stderr)
    return deepctr_torch


def feature_columns(meta: dict, emb_dim: int, cross_dense: bool) -> list:
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat

    lay, vs = meta["layout"], meta["vocab_size"]
    cols = [SparseFeat(f"s_{f}", vs[f], embedding_dim=emb_dim) for f in lay["single"]]
    cols += [
        VarLenSparseFeat(
            SparseFeat(f"m_{f}", vs[f], embedding_dim=emb_dim),
            maxlen=lay["max_len"],
            combiner="mean",
        )
        for f in lay["multi"]
    ]
    if cross_dense:
        cols += [DenseFeat(f"d_{f}", 1) for f in lay["dense"]]
    return cols


def model_inputs(split: dict, meta: dict, cross_dense: bool) -> dict[str, np.ndarray]:
    """Feature name -> float32 array, as DeepCTR's ``fit`` / ``predict`` take them."""
    lay = meta["layout"]
    top = max([int(split["single"].max(initial=0)), int(split["multi"].max(initial=0))])
    if top >= MAX_FLOAT_ID:
        raise ValueError(f"vocabulary index {top} does not fit DeepCTR's float32 inputs")
    x = {f"s_{f}": split["single"][:, j].astype(np.float32) for j, f in enumerate(lay["single"])}
    x.update(
        {f"m_{f}": split["multi"][:, j, :].astype(np.float32) for j, f in enumerate(lay["multi"])}
    )
    if cross_dense:
        x.update({f"d_{f}": split["dense"][:, j].copy() for j, f in enumerate(lay["dense"])})
    return x


def _masked_ctr_cvr_bce(y_pred: torch.Tensor, y: torch.Tensor, reduction: str = "sum"):
    """BCE of the CTR task on all rows plus BCE of the CVR task on rows with a label (>= 0)."""
    ctr = F.binary_cross_entropy(y_pred[:, 0], y[:, 0], reduction=reduction)
    m = y[:, 1] >= 0
    cvr = F.binary_cross_entropy(y_pred[m, 1], y[m, 1], reduction=reduction)
    return ctr + cvr


@torch.no_grad()
def predict_ctr_cvr(model, kind: str, x: dict, batch_size: int = 65536, task2: str = "cvr"):
    """(p_ctr, p_cvr) float64 arrays of the model on inputs ``x``."""
    model.eval()
    arrays = [x[name] for name in model.feature_index]
    arrays = [a[:, None] if a.ndim == 1 else a for a in arrays]
    X = torch.from_numpy(np.concatenate(arrays, axis=1))
    seen: list[torch.Tensor] = []
    hook = None
    if kind == "esmm":
        # ESMM applies its one PredictionLayer to the CTR logit, then to the CVR logit.
        hook = model.out.register_forward_hook(lambda mod, inp, out: seen.append(out))
    ctr, cvr = [], []
    try:
        for i in range(0, X.shape[0], batch_size):
            seen.clear()
            out = model(X[i : i + batch_size].to(model.device).float())
            if kind == "esmm":
                if len(seen) != 2 or not torch.allclose(seen[0] * seen[1], out[:, 1:2]):
                    raise RuntimeError("ESMM's CVR tower output could not be read")
                ctr.append(out[:, 0].cpu())
                cvr.append(seen[1][:, 0].cpu())
            elif task2 == "cvr":
                ctr.append(out[:, 0].cpu())
                cvr.append(out[:, 1].cpu())
            else:  # MMOE with a CTCVR task: p_cvr = p_ctcvr / p_ctr
                p_ctr = out[:, 0].double()
                ctr.append(p_ctr.cpu())
                cvr.append((out[:, 1].double() / p_ctr.clamp_min(1e-12)).cpu())
    finally:
        if hook is not None:
            hook.remove()
    return torch.cat(ctr).double().numpy(), torch.cat(cvr).double().numpy()


def train_deepctr(
    kind: str,
    data,
    *,
    seed: int,
    device: str,
    epochs: int = 1,
    batch_size: int = 1024,
    lr: float = 1e-3,
    emb_dim: int = 8,
    tower: tuple[int, ...] = (256, 128),
    cross_dense: bool = True,
    task2: str = "cvr",
    inputs: dict | None = None,
) -> dict:
    """Train ESMM or MMOE (``kind`` 'esmm' | 'mmoe') and predict the test split.

    ``data`` is the peers' :class:`aliccp_reader.Encoded`; ``inputs`` may hold the model inputs
    of each split, built once by :func:`model_inputs` and shared between models.
    """
    import_deepctr()
    from deepctr_torch.models.multitask import ESMM, MMOE

    meta = data.meta
    if inputs is None:
        inputs = {s: model_inputs(data.splits[s], meta, cross_dense) for s in data.splits}
    cols = feature_columns(meta, emb_dim, cross_dense)
    tr = data.splits["train"]
    click = tr["click"].astype(np.float32)
    conv = tr["conversion"].astype(np.float32)
    dev = "cuda:0" if device == "cuda" else "cpu"
    if kind == "esmm":
        model = ESMM(cols, tower_dnn_hidden_units=tower, seed=seed, device=dev)
        loss = ["binary_crossentropy", "binary_crossentropy"]
        y = np.stack([click, conv], axis=1)
    elif kind == "mmoe":
        names = ("ctr", task2)
        model = MMOE(cols, tower_dnn_hidden_units=tower, task_names=names, seed=seed, device=dev)
        if task2 == "cvr":
            loss = _masked_ctr_cvr_bce
            y = np.stack([click, np.where(click > 0, conv, -1.0).astype(np.float32)], axis=1)
        else:
            loss = ["binary_crossentropy", "binary_crossentropy"]
            y = np.stack([click, conv], axis=1)
    else:
        raise ValueError(kind)
    model.compile(torch.optim.Adam(model.parameters(), lr=lr), loss=loss)
    history, best, best_state = [], None, None
    t0 = time.perf_counter()
    train_s = 0.0
    for epoch in range(epochs):
        t_ep = time.perf_counter()
        # The library prints its device and sizes on stdout: keep stdout for the table.
        with contextlib.redirect_stdout(sys.stderr):
            model.fit(dict(inputs["train"]), y, batch_size=batch_size, epochs=1, verbose=0)
        train_s += time.perf_counter() - t_ep
        va = data.splits["valid"]
        p_ctr, p_cvr = predict_ctr_cvr(model, kind, inputs["valid"], task2=task2)
        aucs = task_aucs(va["click"], va["conversion"], p_ctr, p_cvr)
        history.append({"epoch": epoch + 1, "train_s": train_s, **aucs})
        print(f"[peers] {kind} seed {seed} epoch {epoch + 1}: valid {aucs}", file=sys.stderr)
        score = aucs["primary"] if aucs["primary"] is not None else -1.0
        if best is None or score > best["score"]:
            best = {"score": score, "epoch": epoch + 1}
            best_state = copy.deepcopy(model.state_dict()) if epochs > 1 else None
    if best_state is not None:
        model.load_state_dict(best_state)
    t_pred = time.perf_counter()
    te = data.splits["test"]
    p_ctr, p_cvr = predict_ctr_cvr(model, kind, inputs["test"], task2=task2)
    return {
        "sample_id": te["sample_id"],
        "p_ctr": p_ctr,
        "p_cvr": p_cvr,
        "train_s": train_s,
        "predict_s": time.perf_counter() - t_pred,
        "total_s": time.perf_counter() - t0,
        "best_epoch": best["epoch"],
        "valid_history": history,
    }
