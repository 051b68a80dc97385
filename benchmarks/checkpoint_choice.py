"""Which validation metric picks the best weights: the test AUCs of every validated checkpoint.

Trains on a raw folder (encoded once into ``--work``) with the parameters of ``conf/base`` plus
``--params``, once per seed. At every validation the weights are also scored on the test split,
so each choice of ``runtime.best_metric`` (and the last weights, and the best test checkpoint
in hindsight) can be read off one run: the table gives the test AUCs each rule would keep.

    python -m benchmarks.checkpoint_choice --raw data/world2/01_raw/aliccp_synthetic \\
        --work /tmp/choice --seeds 1 2 3 4 5 --json choice.jsonl

The run's own choice (``best_step``) is the rule of ``runtime.best_metric``; the others are
computed from the same validations, so every row of a seed compares the same checkpoints.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RULES = ("auc_primary", "auc_ctr", "auc_ctcvr", "auc_cvr")
TASKS = ("auc_ctr", "auc_cvr", "auc_ctcvr", "auc_primary")


def choose(points: list[dict]) -> dict[str, dict]:
    """Per rule, the point it keeps: the first highest validation value (as training does),
    the last point, and the best test primary in hindsight."""
    out = {}
    for key in RULES:
        scored = [p for p in points if p["valid"].get(key) is not None]
        if scored:
            out[key] = max(scored, key=lambda p: p["valid"][key])  # max keeps the first
    out["last"] = points[-1]
    out["hindsight"] = max(points, key=lambda p: p["test"]["auc_primary"])
    return out


def main() -> None:
    import torch

    from benchmarks.conf import parameters
    from rec_pipeline.config import load_config
    from rec_pipeline.data.batches import load_splits
    from rec_pipeline.data.processing import process_folder
    from rec_pipeline.data.raw import RawFiles
    from rec_pipeline.metrics.evaluate import flat_metrics
    from rec_pipeline.train.evaluation import Correction, evaluate_model
    from rec_pipeline.train.loop import Trainer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", required=True, help="raw Ali-CCP folder (with its test split)")
    ap.add_argument("--work", required=True, help="folder for the encoding")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--params", default="", help="dotted overrides over conf/base")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, help="append one line per seed (every point)")
    args = ap.parse_args()

    params = parameters("base", args.params)
    params["runtime"].update({"device": args.device, "progress_bar": False, "auto_eval": False})
    cfg = load_config(params)
    data = process_folder(RawFiles(Path(args.raw)).check(), cfg.data, cfg.vocab, Path(args.work))
    dev = torch.device(args.device)
    parts = {"train": data.encoded("train"), "valid": data.encoded("valid")}
    splits = load_splits(data.metadata, parts, data.encoded("train_commons"), dev)
    test = load_splits(
        data.metadata, {"test": data.encoded("test")}, data.encoded("test_commons"), dev
    )["test"]

    class TestedTrainer(Trainer):
        """Scores the test split at every validation, next to the validation's metrics."""

        points: list[dict]

        def _validate(self) -> None:
            super()._validate()
            valid = {
                r["name"]: r["value"]
                for r in self.history.rows
                if r["kind"] == "valid" and r["step"] == self.step and r["name"] in TASKS
            }
            if not valid:  # no validation split
                return
            scored = evaluate_model(
                self.model,
                test,
                batch_size=8192,
                esmm=self.cfg.use_esmm,
                correction=Correction(self.keep_prob, self._ctr_pos_weight()),
            )
            flat = flat_metrics(scored.metrics)
            test_aucs = {k: flat[k] for k in TASKS if k in flat}
            self.points.append({"step": self.step, "valid": valid, "test": test_aucs})

    kept: dict[str, list[dict]] = {}
    for seed in args.seeds:
        params["runtime"]["seed"] = seed
        trainer = TestedTrainer(
            load_config(params), data.metadata, splits["train"], splits["valid"]
        )
        trainer.points = []
        result = trainer.fit()
        points = trainer.points
        if args.json:
            with open(args.json, "a") as f:
                line = {"seed": seed, "best_step": result.summary["best_step"], "points": points}
                f.write(json.dumps(line) + "\n")
        chosen = choose(points)
        for rule, point in chosen.items():
            kept.setdefault(rule, []).append(point["test"])
        print(
            f"seed {seed}: "
            + ", ".join(
                f"{r} @{p['step']} {p['test']['auc_primary']:.4f}" for r, p in chosen.items()
            ),
            flush=True,
        )

    print("\n| kept by | test primary, per seed | mean ± sd | CTR / CVR / CTCVR (means) |")
    print("|---|---|---|---|")
    for rule, tests in kept.items():
        prim = [t["auc_primary"] for t in tests]
        sd = statistics.stdev(prim) if len(prim) > 1 else 0.0
        means = " / ".join(f"{statistics.mean(t[k] for t in tests):.4f}" for k in TASKS[:3])
        per_seed = " / ".join(f"{v:.4f}" for v in prim)
        print(f"| {rule} | {per_seed} | {statistics.mean(prim):.4f} ± {sd:.4f} | {means} |")


if __name__ == "__main__":
    main()
