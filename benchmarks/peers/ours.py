"""Ours: ``rec_pipeline`` on a raw Ali-CCP folder, in-process and without Kedro.

Everything that touches the project's API is in :func:`run_ours`, so a refactor of the library
has one place to adapt here. It makes the library calls the data-processing nodes make (parse ->
vocabularies -> encode -> negative sampling -> metadata, every yielded chunk written as a
Parquet shard), trains with :func:`rec_pipeline.train.run.train` and predicts the test split with
:func:`rec_pipeline.train.run.evaluate_checkpoint`, as the training and evaluation nodes do (fp32,
the checkpoint's calibration), and returns the per-row predictions so that the harness scores
them with its own metric code. Nothing here imports Kedro.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import yaml


def split_overrides(overrides: str) -> list[str]:
    """``"a=1,b=[0, 30]"`` -> ``["a=1", "b=[0, 30]"]``: commas inside brackets stay."""
    items, depth, cur = [], 0, []
    for ch in overrides:
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    return [i.strip() for i in items if i.strip()]


def apply_overrides(params: dict, overrides: str) -> dict:
    """A copy of ``params`` with ``"a.b=1,c=[0, 30]"`` applied (values parsed as YAML)."""
    out = copy.deepcopy(params)
    for item in split_overrides(overrides):
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value)
    return out


def run_ours(
    raw_dir: Path,
    params: dict,
    overrides: str = "",
    *,
    work_dir: Path,
    device: str = "cpu",
    seed: int | None = None,
    epochs: int | None = None,
) -> dict:
    """Train and predict the test split with ``params`` + ``overrides`` (dotted ``key=value``).

    ``seed`` sets ``runtime.seed`` (model initialisation and batch order; the data split and
    negative sampling keep ``data.seed``, so every seed shares one encoding) and ``epochs``
    ``runtime.epochs``; both before ``overrides``, which win. The encoded data are cached under
    ``work_dir`` per raw folder, data / vocabulary parameters and encoding code.

    Returns ``sample_id``, ``p_ctr`` / ``p_cvr`` (the heads' own outputs, which the AUCs rank:
    docs/model.md, Metrics), ``p_ctr_calibrated`` / ``p_cvr_calibrated`` (the published probabilities, calibrated
    as the evaluation node does), ``train_s``, ``predict_s``, ``encode_s`` (0 when cached), the
    project's own test metrics (``self_reported``) for cross-checking and the effective
    ``params``.
    """
    import torch

    import rec_pipeline
    from rec_pipeline.config import load_config
    from rec_pipeline.data.processing import encoding_settings, process_folder
    from rec_pipeline.data.raw import RawFiles
    from rec_pipeline.train.loop import resolve_device
    from rec_pipeline.train.run import evaluate_checkpoint, train

    base = copy.deepcopy(params)
    base.setdefault("runtime", {})
    if seed is not None:
        base["runtime"]["seed"] = int(seed)
    if epochs is not None:
        base["runtime"]["epochs"] = int(epochs)
    p = apply_overrides(base, overrides)
    p["runtime"].update({"device": device, "progress_bar": False, "auto_eval": False})
    cfg = load_config(p)  # validates every key before any work
    dev = resolve_device(cfg.runtime.device)

    # ---- data: parse, vocabularies, split + sample + encode (cached per data parameters)
    raw = RawFiles(Path(raw_dir)).check()
    # One folder per raw files and encoding settings (so a sweep keeps each encoding) ...
    h = hashlib.sha256(json.dumps(encoding_settings(raw, cfg.data, cfg.vocab)).encode())
    # ... and per code that encodes (a refactor invalidates the cache).
    pkg_dir = Path(rec_pipeline.__file__).parent
    for src in sorted((pkg_dir / "data").rglob("*.py")):
        h.update(src.read_bytes())
    folder = Path(work_dir) / f"ours_encoding_{h.hexdigest()[:16]}"
    data = process_folder(raw, cfg.data, cfg.vocab, folder)
    encode_s = sum(v for k, v in data.seconds.items() if k != "sampling")  # 0 when reused
    meta = data.metadata

    # ---- train, then predict the test split with the best checkpoint
    t0 = time.perf_counter()
    res = train(
        cfg,
        meta,
        data.encoded("train"),
        data.encoded("valid"),
        data.encoded("train_commons"),
    )
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    preds, metrics = evaluate_checkpoint(
        res.checkpoint,
        "test",
        data.encoded("test"),
        data.encoded("test_commons"),
        None,
        which="best",
        settings=cfg.evaluation,
        device=str(dev),
    )
    predict_s = time.perf_counter() - t1
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "sample_id": preds["sample_id"].to_numpy(),
        "p_ctr": preds["p_ctr_uncorrected"].to_numpy(),
        "p_cvr": preds["p_cvr_uncorrected"].to_numpy(),
        "p_ctr_calibrated": preds["p_ctr"].to_numpy(),
        "p_cvr_calibrated": preds["p_cvr"].to_numpy(),
        "train_s": train_s,
        "predict_s": predict_s,
        "encode_s": encode_s,
        "epochs": cfg.runtime.epochs,
        "best_step": res.summary.get("best_step"),
        "train_summary": {k: v for k, v in res.summary.items() if k != "best_metrics"},
        # Throughput of each log window (validation excluded), in order: the first holds the
        # warm-up and any graph capture.
        "window_samples_per_s": res.history.query("kind == 'train' and name == 'samples_per_s'")[
            "value"
        ].tolist(),
        "self_reported": {
            "auc_primary": metrics.get("auc_primary"),
            **{f"auc_{t}": v.get("auc") for t, v in metrics["tasks"].items()},
        },
        "rows": meta.splits,
        "params": p,
    }
