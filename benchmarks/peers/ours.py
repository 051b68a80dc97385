"""Ours: ``rec_pipeline`` on a raw Ali-CCP folder, in-process and without Kedro.

Everything that touches the project's API is in :func:`run_ours`, so a refactor of the
data-processing nodes or the trainer has one place to adapt here. It runs the three
data-processing node functions as Kedro would (parse -> vocabularies -> split / sample /
encode, every yielded chunk written as a Parquet shard), builds ``metadata.json``'s dict, trains
with ``Trainer(cfg, meta, train, valid).fit()``, rebuilds the best checkpoint and predicts the
test split with ``evaluate_split`` as the evaluation node does (fp32, its calibration), and
returns the per-row predictions so that the harness scores them with its own metric code.

Import chain: ``rec_pipeline.pipelines.data_processing/__init__.py`` imports Kedro (through its
``pipeline.py``); the node module itself does not. :func:`run_ours` imports the node module under
a bare stand-in for that package, so nothing here imports Kedro (nor ``rec_pipeline.datasets``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import sys
import time
import types
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
    SPEC §6), ``p_ctr_calibrated`` / ``p_cvr_calibrated`` (the published probabilities, calibrated
    as the evaluation node does), ``train_s``, ``predict_s``, ``encode_s`` (0 when cached), the
    project's own test metrics (``self_reported``) for cross-checking and the effective
    ``params``.
    """
    import rec_pipeline

    pkg = "rec_pipeline.pipelines.data_processing"
    stand_in = None
    if pkg not in sys.modules:
        stand_in = types.ModuleType(pkg)
        stand_in.__path__ = [str(Path(rec_pipeline.__file__).parent / "pipelines/data_processing")]
        sys.modules[pkg] = stand_in
    try:
        nodes = importlib.import_module(pkg + ".nodes")
    finally:
        if stand_in is not None and sys.modules.get(pkg) is stand_in:
            del sys.modules[pkg]
    import torch

    from rec_pipeline.config import load_config
    from rec_pipeline.data.batches import load_splits
    from rec_pipeline.data.raw import RawFiles
    from rec_pipeline.data.shards import ShardSet, ShardWriter
    from rec_pipeline.train.inference import evaluate_split
    from rec_pipeline.train.loop import (
        Trainer,
        checkpoint_calibration,
        checkpoint_ctr_pos_weight,
        model_from_checkpoint,
        resolve_device,
    )

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
    h = hashlib.sha256()
    for name in (
        "sample_skeleton_train.csv",
        "common_features_train.csv",
        "sample_skeleton_test.csv",
        "common_features_test.csv",
    ):
        path = (Path(raw_dir) / name).resolve()
        h.update(f"{path}|{path.stat().st_size}|{path.stat().st_mtime_ns}".encode())
    # So does the code that encodes (a refactor invalidates the cache) ...
    pkg_dir = Path(rec_pipeline.__file__).parent
    for src in sorted((pkg_dir / "data").glob("*.py")) + [Path(nodes.__file__)]:
        h.update(src.read_bytes())
    # ... and everything under data / vocab but the loader's settings and the data's source.
    loader_keys = {"batch_size", "num_workers", "num_workers_valid", "pin_memory"}
    loader_keys |= {"persistent_workers", "drop_last", "debug", "prefetch_factor"}
    loader_keys |= {"metadata_path", "source"}
    data_params = {
        "data": {k: v for k, v in cfg.data.model_dump(mode="json").items() if k not in loader_keys},
        "vocab": cfg.vocab.model_dump(mode="json"),
    }
    h.update(json.dumps(data_params, sort_keys=True, default=str).encode())
    folder = Path(work_dir) / f"ours_encoding_{h.hexdigest()[:16]}"
    parsed_names = ("parsed_train_samples", "parsed_train_commons")
    parsed_names += ("parsed_test_samples", "parsed_test_commons", "quarantine")
    enc_names = ("train", "valid", "test", "train_commons", "test_commons")
    done = folder / "encode_report.json"
    encode_s = 0.0
    if not done.exists():
        t0 = time.perf_counter()
        writers = {n: ShardWriter(folder / n) for n in parsed_names}
        for w in writers.values():
            w.reset()
        for outs in nodes.parse_raw_files(raw, p):
            for name, table in zip(parsed_names, outs[:5], strict=True):
                writers[name].write(table)
        parsed = [ShardSet(folder / n) for n in parsed_names[:4]]
        vocab = nodes.build_vocabularies(parsed[0], parsed[1], p)
        vocab.to_parquet(folder / "vocabularies.parquet")
        enc = {n: ShardWriter(folder / f"encoded_{n}") for n in enc_names}
        for w in enc.values():
            w.reset()
        report = None
        for outs in nodes.encode_features(*parsed, vocab, p):
            for name, table in zip(enc_names, outs[:5], strict=True):
                enc[name].write(table)
            report = outs[5]
        done.write_text(json.dumps(report, default=str))  # written last: marks the cache complete
        encode_s = time.perf_counter() - t0
    import pandas as pd

    vocab = pd.read_parquet(folder / "vocabularies.parquet")
    report = json.loads(done.read_text())
    meta = nodes.build_metadata(vocab, report, p)

    # ---- train, then predict the test split with the best checkpoint
    splits = load_splits(
        meta,
        {"train": ShardSet(folder / "encoded_train"), "valid": ShardSet(folder / "encoded_valid")},
        ShardSet(folder / "encoded_train_commons"),
        dev,
    )
    t0 = time.perf_counter()
    res = Trainer(cfg, meta, splits["train"], splits["valid"]).fit()
    train_s = time.perf_counter() - t0
    del splits
    test = load_splits(
        meta,
        {"test": ShardSet(folder / "encoded_test")},
        ShardSet(folder / "encoded_test_commons"),
        dev,
    )["test"]
    t1 = time.perf_counter()
    model = model_from_checkpoint(res.checkpoint, "best", dev)
    metrics, preds = evaluate_split(
        model,
        test,
        batch_size=cfg.evaluation.batch_size,
        esmm=cfg.use_esmm,
        keep_prob=float(meta["neg_keep_prob_train"]),
        ctr_pos_weight=checkpoint_ctr_pos_weight(
            res.checkpoint, "best", cfg.evaluation.correct_pos_weight
        ),
        n_bins=cfg.evaluation.calibration_bins,
        calibration=checkpoint_calibration(res.checkpoint, "best", cfg.evaluation.calibration),
        with_predictions=True,
    )
    predict_s = time.perf_counter() - t1
    del model, test
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "sample_id": preds["sample_id"].to_numpy(),
        "p_ctr": preds["p_ctr_uncorrected"].to_numpy(),
        "p_cvr": preds.get("p_cvr_uncorrected", preds["p_cvr"]).to_numpy(),
        "p_ctr_calibrated": preds["p_ctr"].to_numpy(),
        "p_cvr_calibrated": preds["p_cvr"].to_numpy(),
        "train_s": train_s,
        "predict_s": predict_s,
        "encode_s": encode_s,
        "epochs": cfg.runtime.epochs,
        "best_step": res.summary.get("best_step"),
        "self_reported": {
            "auc_primary": metrics.get("auc_primary"),
            **{f"auc_{t}": v.get("auc") for t, v in metrics["tasks"].items()},
        },
        "rows": meta["splits"],
        "params": p,
    }
