"""Benchmark: MF / LightGCN on Gowalla under poisoning, without a defense, with APR and with VAT.

Cells are (seed, model, attack, defense); seeds are the outer loop so that an interrupted sweep
still holds whole grids for its first seeds. Every cell is a harness run (resumable: rerunning
skips finished cells), and results.json / README.md are rewritten after each cell, labelled with
how many cells are done.

    python scripts/bench_robust_recsys.py --user-sample 3000 --epochs mf=80 lightgcn=20 \
        --begin-adv mf=40 lightgcn=10 --seeds 0 1 2

``--epochs`` and ``--begin-adv`` take one number for every model or ``model=number`` pairs, since
LightGCN converges in far fewer epochs than MF and costs ~10x more per epoch.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from pathlib import Path

from grp_workbench.harness.config import build_config
from grp_workbench.harness.report import write_results
from grp_workbench.harness.runs import RunDir
from grp_workbench.harness.trainer import train_cell
from grp_workbench.recsys.benchmarks import RESULT_METHOD, ROBUST_RECSYS
from grp_workbench.recsys.train import SPECS


def cell_record(spec_name: str, seed: int, summary: dict, run: RunDir) -> dict:
    """The record the runner's robust_recsys suite makes of the same run (recsys/benchmarks.py)."""
    metrics = ROBUST_RECSYS.record(None, summary, run)
    return {"method": RESULT_METHOD[spec_name], "task": summary["task"], "seed": seed, "metrics": metrics}


def per_model(values: list[str], models: list[str], flag: str) -> dict[str, int]:
    """``["80"]`` -> every model 80; ``["mf=80", "lightgcn=20"]`` -> per model (each model named once)."""
    if len(values) == 1 and "=" not in values[0]:
        return dict.fromkeys(models, int(values[0]))
    pairs = dict(value.split("=", 1) for value in values if "=" in value)
    missing = [m for m in models if m not in pairs]
    if missing or len(pairs) != len(values):
        raise SystemExit(f"{flag} {' '.join(values)}: give one number, or model=number for each of {', '.join(models)}")
    return {model: int(pairs[model]) for model in models}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mf", "lightgcn"])
    parser.add_argument("--attacks", nargs="+", default=["none", "random", "bandwagon"])
    parser.add_argument("--defenses", nargs="+", default=["bpr", "apr", "vat"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--user-sample", type=int, default=5000, help="seeded user sample of Gowalla; 0 = all")
    parser.add_argument("--epochs", nargs="+", default=["20"], help="N, or model=N for each model")
    parser.add_argument("--begin-adv", nargs="+", default=None, help="first adversarial epoch: N or model=N")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="extra config overrides key=value")
    parser.add_argument("--runs", default="runs/bench/robust_recsys")
    parser.add_argument("--out", default="benchmarks/robust_recsys")
    args = parser.parse_args()
    epochs = per_model(args.epochs, args.models, "--epochs")
    begin_adv = per_model(args.begin_adv, args.models, "--begin-adv") if args.begin_adv else {}

    cells = list(itertools.product(args.seeds, args.models, args.attacks, args.defenses))
    records = []
    command = "python scripts/bench_robust_recsys.py " + shlex.join(sys.argv[1:])
    for done, (seed, model, attack, defense) in enumerate(cells, start=1):
        spec = SPECS[defense]
        overrides = dict(item.split("=", 1) for item in args.overrides)
        if model in begin_adv:
            overrides["begin_adv"] = begin_adv[model]
        config = build_config(spec.config_cls, spec.presets, "paper", {
            **overrides, "seed": seed, "model": model, "attack": attack, "user_sample": args.user_sample,
            "total_steps": epochs[model], "eval_every": max(epochs[model] // 4, 1)})
        run_dir = Path(args.runs) / spec.task(config) / f"{defense}-seed{seed}"
        summary = train_cell(spec, config, str(run_dir), "paper")
        records.append(cell_record(defense, seed, summary, RunDir(run_dir)))
        final = summary["final"]
        print(f"[{done}/{len(cells)}] seed {seed} {model} {attack} {defense}: recall@20 {final['recall@20']:.4f} "
              f"t_hr@50 {final['t_hr@50']:.4f}", flush=True)
        status = "complete" if done == len(cells) else f"PARTIAL: {done} of {len(cells)} cells done"
        notes = (f"{status}. Gowalla (LightGCN split), seeded sample of {args.user_sample or 'all'} users "
                 f"(sample_seed 0); epochs {epochs}, adversarial term from epoch {begin_adv or 'default'}; "
                 "evaluation on the test split every quarter of training, reported after the last epoch; "
                 "1% fake users, 5 targets from the 20% least popular items (attack_seed 0); the dl attack "
                 "crafts its fakes once against a surrogate MF (cached) and every cell trains on them; defaults of "
                 "recsys/README.md otherwise. Metrics: Recall/NDCG@20 over real users, T-HR/T-NDCG@50 over "
                 "real users without the target; epochs_per_s and eval_seconds (one full evaluation) are "
                 "throughput on this machine.")
        write_results(args.out, "robust_recsys", command, records, notes=notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
