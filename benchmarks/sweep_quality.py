"""Test AUCs against the planted-truth oracle for several parameter overrides, on one dataset.

Reads the latest encoded data of a data root (run `kedro run --pipeline=data` first), trains
once per override set (dotted keys, as for `kedro run --params`), evaluates the best checkpoint
on the test split and prints one table row per run with the oracle AUCs and the gaps.

    python -m benchmarks.sweep_quality --data-root data \\
        "runtime.epochs=2" "runtime.epochs=2,optim.sparse.lr=0.01"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from benchmarks import encoded_data
from benchmarks.peers.ours import apply_overrides
from rec_pipeline.config import load_config
from rec_pipeline.train.evaluation import Correction, evaluate_model
from rec_pipeline.train.loop import Trainer, model_from_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="+", help='e.g. "runtime.epochs=2,optim.sparse.lr=0.01"')
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--params", default="conf/base/parameters.yml")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    dev = torch.device(args.device)
    meta, splits, truth = encoded_data.load(args.data_root, dev, ("train", "valid", "test"))
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    base = yaml.safe_load(Path(args.params).read_text())
    rows = []
    for ov in args.overrides:
        p = apply_overrides(base, ov)
        p["runtime"].update({"device": args.device, "progress_bar": False, "auto_eval": False})
        cfg = load_config(p)
        t0 = time.perf_counter()
        res = Trainer(cfg, meta, train, valid).fit()
        model = model_from_checkpoint(res.checkpoint, "best", dev)
        m = evaluate_model(
            model,
            test,
            batch_size=65536,
            esmm=cfg.use_esmm,
            correction=Correction(keep_prob=meta["neg_keep_prob_train"]),
            truth=truth,
        ).metrics
        row = {
            "overrides": ov,
            "seconds": time.perf_counter() - t0,
            "best_step": res.summary["best_step"],
        }
        for t, v in m["tasks"].items():
            row[f"auc_{t}"], row[f"oracle_{t}"] = v["auc"], v["oracle_auc"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| overrides | s | best step | CTR (oracle) | CVR (oracle) | CTCVR (oracle) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [
            f"{r[f'auc_{t}']:.4f} ({r[f'oracle_{t}']:.4f})" if r[f"auc_{t}"] is not None else "n/a"
            for t in ("ctr", "cvr", "ctcvr")
        ]
        print(
            f"| `{r['overrides']}` | {r['seconds']:.0f} | {r['best_step']} | "
            + " | ".join(cells)
            + " |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
