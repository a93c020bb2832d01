"""`make demo`: a short end-to-end run of every method that exists, then one report.

Each method trains in its ``quick`` preset into ``runs/demo/<method>/...``; rerunning skips finished
runs and resumes interrupted ones. The report (tables + figures) goes to ``reports/demo/report.md``.
"""

from __future__ import annotations

import argparse
import sys
import time

from federated.classifier import SPEC as CLASSIFIER
from harness.config import build_config
from harness.errors import WorkbenchError
from harness.report import write_report
from harness.trainer import train
from recsys.train import SPECS as RECSYS
from rl.offline.a2pr import SPEC as A2PR
from rl.offline.datasets import local_dataset_path
from rl.offline.td3bc import SPEC as TD3BC

# offline RL on a dataset the project builds in seconds; the MuJoCo ones take hours of SAC training
OFFLINE = {"dataset": "pointreach-medium", "total_steps": 1000, "eval_every": 250, "checkpoint_every": 500}

# (method spec, overrides) for every method in the workbench; each new method adds its line and the
# metrics its report tables should show.
DEMO_METHODS = [
    (CLASSIFIER, {}),
    # attacked vs defended recommender: bandwagon poisoning of MF, without a defense and with VAT
    (RECSYS["bpr"], {"attack": "bandwagon"}),
    (RECSYS["vat"], {"attack": "bandwagon"}),
    # offline RL: the TD3+BC baseline and A2PR on the same data
    (TD3BC, OFFLINE),
    (A2PR, OFFLINE),
]
REPORT_METRICS = ["accuracy", "recall@20", "ndcg@20", "t_hr@50", "normalized_score"]


def prepare_data() -> None:
    """Build the datasets the demo needs if the cache lacks them."""
    from envs.datasets import build

    if not local_dataset_path(OFFLINE["dataset"]).is_file():
        print(f"building {OFFLINE['dataset']} -> {build(OFFLINE['dataset'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per method (default: 0)")
    parser.add_argument("--preset", default="quick", help="preset for every method (default: quick)")
    parser.add_argument("--runs", default="runs/demo", help="where the run directories go")
    parser.add_argument("--out", default="reports/demo", help="where the report goes")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    try:
        prepare_data()
        for spec, overrides in DEMO_METHODS:
            for seed in args.seeds:
                config = build_config(spec.config_cls, spec.presets, args.preset, {**overrides, "seed": seed})
                run_dir = f"{args.runs}/{spec.name}/{spec.task(config)}/{args.preset}-seed{seed}"
                start = time.perf_counter()
                summary = train(spec, config, run_dir, args.preset, if_exists="resume", quiet=args.quiet)
                metric = summary["main_metric"]
                print(f"{spec.name} seed {seed}: {metric} {summary['final'][metric]:.4f} "
                      f"({time.perf_counter() - start:.0f} s) -> {run_dir}")
        path = write_report([args.runs], args.out, metrics=REPORT_METRICS, title="workbench demo")
    except WorkbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
