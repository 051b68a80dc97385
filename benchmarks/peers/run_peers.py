"""Off-the-shelf peers vs ours on one raw Ali-CCP folder: one side-by-side table of test AUCs.

Reads the four raw files with the peers' own reader (``aliccp_reader.py``: no ``rec_pipeline``
code), trains DeepCTR-Torch 0.3.0's ESMM and MMOE and two scikit-learn logistic regressions on
that encoding, runs ``rec_pipeline`` itself on the same folder (``ours.py``, one row per
``--ours-overrides`` set), scores every model's test predictions with the same code
(``metrics.py``) and prints one markdown table: CTR, CVR (clicked rows), CTCVR and the primary
AUC, mean ± std over ``--seeds``, with the oracle row (true probabilities) when the folder
holds ``truth_test.parquet``.

    python -m benchmarks.peers.run_peers --raw data/01_raw/aliccp_synthetic --seeds 1 2 3 \\
        --ours-overrides "" "runtime.epochs=1" --json peers.json

See benchmarks/peers/README.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from benchmarks.peers import aliccp_reader
from benchmarks.peers.metrics import COLUMNS, markdown_table, summarise, task_aucs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

PEERS = ("esmm", "mmoe", "rechub-esmm", "rechub-mmoe", "logreg")
LABELS = {
    "esmm": "DeepCTR-Torch ESMM",
    "mmoe": "DeepCTR-Torch MMOE",
    "rechub-esmm": "torch-rechub ESMM",
    "rechub-mmoe": "torch-rechub MMOE (conversion, click)",
    "logreg": "scikit-learn LogisticRegression",
}


def _log(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


def _score(test: dict, result: dict) -> dict:
    """AUCs of a model's test predictions, aligned to the reader's test rows by sample_id."""
    ids = np.asarray(test["sample_id"], dtype=np.int64)
    pid = np.asarray(result["sample_id"], dtype=np.int64)
    order = np.argsort(pid, kind="stable")
    pos = np.minimum(np.searchsorted(pid[order], ids), len(pid) - 1)
    found = pid[order][pos] == ids
    take = order[pos][found]
    out = task_aucs(
        test["click"][found],
        test["conversion"][found],
        np.asarray(result["p_ctr"])[take],
        np.asarray(result["p_cvr"])[take],
    )
    out["n_test_rows"] = int(found.sum())
    if "p_ctr_calibrated" in result:  # ours: CTCVR ranked by its published probabilities too
        cal = task_aucs(
            test["click"][found],
            test["conversion"][found],
            np.asarray(result["p_ctr_calibrated"])[take],
            np.asarray(result["p_cvr_calibrated"])[take],
        )
        out["ctcvr_calibrated"] = cal["ctcvr"]
    return out


def _oracle(raw_dir: Path, test: dict) -> dict | None:
    path = raw_dir / "truth_test.parquet"
    if not path.exists():
        return None
    truth = pd.read_parquet(path)
    cols = {"sample_id", "p_ctr", "p_cvr"}
    if not cols <= set(truth.columns):
        _log(f"{path} lacks {sorted(cols - set(truth.columns))}: no oracle row")
        return None
    res = {
        "sample_id": truth["sample_id"].to_numpy(np.int64),
        "p_ctr": truth["p_ctr"].to_numpy(np.float64),
        "p_cvr": truth["p_cvr"].to_numpy(np.float64),
    }
    out = _score(test, res)
    if out["n_test_rows"] != len(test["click"]):
        _log(f"truth covers {out['n_test_rows']} of {len(test['click'])} test rows")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", required=True, type=Path, help="folder with the four raw files")
    ap.add_argument("--work", type=Path, default=None, help="cache folder (default: a temp dir)")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs of every model (default: 1 for the peers, runtime.epochs for ours)",
    )
    ap.add_argument("--max-train-rows", type=int, default=None, help="first N training samples")
    ap.add_argument("--only", choices=("ours", "peers", "all"), default="all")
    ap.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    ap.add_argument(
        "--ours-overrides",
        nargs="+",
        default=[""],
        metavar="SET",
        help='one row per set of dotted overrides, e.g. "" "runtime.epochs=1,optim.dense.lr=0.001"',
    )
    ap.add_argument("--params", type=Path, default=ROOT / "conf/base/parameters.yml")
    ap.add_argument("--no-cross-dense", action="store_true", help="no dense 508/509/702 values")
    ap.add_argument("--mmoe-task", choices=("cvr", "ctcvr"), default="cvr")
    ap.add_argument("--logreg-c", type=float, nargs="+", default=None, help="C grid")
    ap.add_argument("--max-len", type=int, default=10, help="ids kept per behaviour list")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU visible to torch")
    cross_dense = not args.no_cross_dense
    with tempfile.TemporaryDirectory(prefix="peers_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report = _run(args, device, cross_dense, work)
    print(report)


def _run(args, device: str, cross_dense: bool, work: Path) -> str:
    raw = args.raw
    if args.max_train_rows:
        raw = aliccp_reader.limit_train_rows(args.raw, work, args.max_train_rows)
        _log(f"using the first {args.max_train_rows:,} training samples: {raw}")
    data = aliccp_reader.load_encoded(raw, work, max_len=args.max_len)
    test = data.splits["test"]
    runs: list[dict] = []
    out = {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "raw": str(args.raw),
        "device": device,
        "torch": torch.__version__,
        "seeds": args.seeds,
        "cross_dense": cross_dense,
        "data": {k: v for k, v in data.meta.items() if k != "layout"},
        "layout": data.meta["layout"],
        "runs": runs,
    }

    def record(model: str, seed, result: dict, **extra) -> None:
        arrays = ("sample_id", "p_ctr", "p_cvr", "p_ctr_calibrated", "p_cvr_calibrated")
        row = {"model": model, "seed": seed, **extra}
        row.update({k: v for k, v in result.items() if k not in arrays})
        row.update(_score(test, result))
        runs.append(row)
        _log(
            f"{model} seed {seed}: "
            + ", ".join(f"{c} {row[c]:.4f}" for c in COLUMNS if row[c] is not None)
            + f" (train {row['train_s']:.1f} s)"
        )
        if args.json:
            args.json.write_text(json.dumps(out, indent=1, default=_json_default))

    peer_epochs = args.epochs or 1
    if args.only in ("peers", "all"):
        if "logreg" in args.peers:
            from benchmarks.peers.logreg import DEFAULT_CS, train_logreg

            res = train_logreg(data, cross_dense=cross_dense, Cs=tuple(args.logreg_c or DEFAULT_CS))
            record(LABELS["logreg"], None, res)
        deep = [p for p in ("esmm", "mmoe") if p in args.peers]
        if deep:
            from benchmarks.peers.deepctr_models import model_inputs, train_deepctr

            inputs = {s: model_inputs(data.splits[s], data.meta, cross_dense) for s in data.splits}
            for seed in args.seeds:
                for kind in deep:
                    res = train_deepctr(
                        kind,
                        data,
                        seed=seed,
                        device=device,
                        epochs=peer_epochs,
                        cross_dense=cross_dense,
                        task2=args.mmoe_task,
                        inputs=inputs,
                    )
                    label = LABELS[kind]
                    if kind == "mmoe":
                        label += f" (ctr, {args.mmoe_task})"
                    record(label, seed, res, epochs=peer_epochs)
            del inputs
        rechub = [p for p in ("rechub-esmm", "rechub-mmoe") if p in args.peers]
        if rechub:
            from benchmarks.peers.rechub_models import train_rechub

            for seed in args.seeds:
                for name in rechub:
                    kind = name.split("-", 1)[1]
                    res = train_rechub(kind, data, seed=seed, device=device, epochs=peer_epochs)
                    record(LABELS[name], seed, res, epochs=peer_epochs)
    if args.only in ("ours", "all"):
        from benchmarks.peers.ours import run_ours

        params = yaml.safe_load(args.params.read_text())
        for ov in args.ours_overrides:
            for seed in args.seeds:
                t0 = time.perf_counter()
                res = run_ours(
                    raw, params, ov, work_dir=work, device=device, seed=seed, epochs=args.epochs
                )
                _log(f"ours `{ov}` seed {seed}: {time.perf_counter() - t0:.1f} s in all")
                record("ours" + (f" `{ov}`" if ov else ""), seed, res, overrides=ov)

    table = []
    for model in dict.fromkeys(r["model"] for r in runs):
        table.append({"model": model, **summarise([r for r in runs if r["model"] == model])})
    oracle = _oracle(args.raw, test)
    if oracle is not None:
        table.append({"model": "oracle (true p_ctr, p_cvr)", "runs": "", **oracle})
    out["table"] = table
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=_json_default))
    m = data.meta
    head = (
        f"Test split: {m['rows']['test']:,} rows, {m['clicks']['test']:,} clicks, "
        f"{m['conversions']['test']:,} conversions; peers trained on {m['rows']['train']:,} "
        f"rows (validation {m['rows']['valid']:,}); device {device}; seeds {args.seeds}."
    )
    return head + "\n\n" + markdown_table(table)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


if __name__ == "__main__":
    main()
