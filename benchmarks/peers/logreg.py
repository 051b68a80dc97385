"""scikit-learn logistic regression peer on one-hot sparse features.

Features (from the peers' own encoding): one column per known id of every single-valued field
(value 1; unknown / absent ids have no column), one column per known id of every multi-valued
field with value ``1 / (number of known ids in the row's list)`` (the linear analogue of mean
pooling, same truncated lists as the deep peers), and, unless disabled, the cross values of
508 / 509 / 702 as three real-valued columns.

Two models: CTR on all training rows, CVR on the clicked training rows only; ``p_ctcvr`` is
``p_ctr * p_cvr``. Each is an L2 ``LogisticRegression(solver='lbfgs')`` whose ``C`` is picked
from a small grid by its own validation AUC (CTR AUC on all validation rows, CVR AUC on the
clicked ones). lbfgs is deterministic, so one run stands for every seed.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from benchmarks.peers.metrics import auc as roc_auc

DEFAULT_CS = (0.01, 0.1, 1.0, 10.0)


def design_matrix(split: dict, meta: dict, cross_dense: bool) -> sp.csr_matrix:
    """CSR design matrix of a split (module docstring); columns fixed by the vocabularies."""
    lay, vs = meta["layout"], meta["vocab_size"]
    n = len(split["click"])
    rows, cols, vals = [], [], []
    offset = 0
    for j, f in enumerate(lay["single"]):
        ids = split["single"][:, j].astype(np.int64)
        r = np.flatnonzero(ids > 0)
        rows.append(r)
        cols.append(offset + ids[r] - 1)
        vals.append(np.ones(len(r), dtype=np.float32))
        offset += vs[f] - 1
    for j, f in enumerate(lay["multi"]):
        ids = split["multi"][:, j, :].astype(np.int64)
        known = ids > 0
        count = known.sum(axis=1)
        r, q = np.nonzero(known)
        rows.append(r)
        cols.append(offset + ids[r, q] - 1)
        vals.append((1.0 / count[r]).astype(np.float32))
        offset += vs[f] - 1
    if cross_dense:
        for j, _ in enumerate(lay["dense"]):
            v = split["dense"][:, j]
            r = np.flatnonzero(v != 0)
            rows.append(r)
            cols.append(np.full(len(r), offset, dtype=np.int64))
            vals.append(v[r].astype(np.float32))
            offset += 1
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, offset)
    )


def _fit_best(X, y, Xv, yv, Cs, label: str) -> tuple[LogisticRegression, dict]:
    scores, best, best_c = {}, None, None
    for c in Cs:
        t0 = time.perf_counter()
        m = LogisticRegression(C=c, solver="lbfgs", max_iter=1000)
        m.fit(X, y)
        score = roc_auc(yv, m.predict_proba(Xv)[:, 1])
        scores[str(c)] = score
        print(
            f"[peers] logreg {label} C={c}: valid AUC {score} ({time.perf_counter() - t0:.1f} s,"
            f" {int(m.n_iter_[0])} iterations)",
            file=sys.stderr,
        )
        if score is not None and (best is None or score > scores[str(best_c)]):
            best, best_c = m, c
    if best is None:  # no validation AUC (one class): take the middle of the grid
        best_c = Cs[len(Cs) // 2]
        best = LogisticRegression(C=best_c, solver="lbfgs", max_iter=1000).fit(X, y)
    return best, {"C": best_c, "valid_auc_by_C": scores}


def train_logreg(data, *, cross_dense: bool = True, Cs=DEFAULT_CS) -> dict:
    """Fit the CTR and CVR models (C tuned on the validation split) and predict the test split."""
    meta = data.meta
    X = {s: design_matrix(data.splits[s], meta, cross_dense) for s in data.splits}
    tr, va, te = data.splits["train"], data.splits["valid"], data.splits["test"]
    t0 = time.perf_counter()
    ctr, ctr_info = _fit_best(X["train"], tr["click"], X["valid"], va["click"], Cs, "ctr")
    ct, cv = tr["click"] == 1, va["click"] == 1
    cvr, cvr_info = _fit_best(
        X["train"][ct], tr["conversion"][ct], X["valid"][cv], va["conversion"][cv], Cs, "cvr"
    )
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    p_ctr = ctr.predict_proba(X["test"])[:, 1]
    p_cvr = cvr.predict_proba(X["test"])[:, 1]
    return {
        "sample_id": te["sample_id"],
        "p_ctr": p_ctr,
        "p_cvr": p_cvr,
        "train_s": train_s,  # the whole C search, both models
        "predict_s": time.perf_counter() - t1,
        "n_features": int(X["train"].shape[1]),
        "ctr_model": ctr_info,
        "cvr_model": cvr_info,
    }
