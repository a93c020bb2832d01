"""Benchmark: the small CNN on MNIST (stratified 8,000 / 2,000 split of the 10k test images).

Trains one run per seed through the harness (resumable: rerunning skips finished seeds and
continues interrupted ones), then writes benchmarks/mnist_classifier/{results.json, README.md,
curves.png}. Acceptance target of the foundation issue: >= 98% held-out accuracy in a few CPU minutes.

    python scripts/bench_mnist_classifier.py --preset quick --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from grp_workbench.federated.classifier import SPEC
from grp_workbench.harness.config import build_config
from grp_workbench.harness.report import collect_runs, plot_learning_curves, write_results
from grp_workbench.harness.trainer import train_cell

OUT = Path("benchmarks/mnist_classifier")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", default="runs/bench/mnist_classifier")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()

    records = []
    for seed in args.seeds:
        config = build_config(SPEC.config_cls, SPEC.presets, args.preset,
                              {"seed": seed, "device": args.device, "precision": args.precision})
        run_dir = Path(args.runs) / args.preset / f"seed{seed}"
        summary = train_cell(SPEC, config, str(run_dir), args.preset, quiet=False)
        device = summary.get("device", {})
        print(f"seed {seed}: accuracy {summary['final']['accuracy']:.4f} on {device.get('device')} "
              f"({device.get('precision')}), {summary['throughput']['wall_seconds']:.0f} s")
        records.append({
            "method": "small_cnn", "task": f"{SPEC.task(config)}-holdout2k", "seed": seed,
            "metrics": {
                "accuracy_last": summary["final"]["accuracy"],
                "accuracy_best": summary["best"]["accuracy"],
                "steps_per_s": summary["throughput"]["steps_per_s"],
                "wall_seconds": summary["throughput"]["wall_seconds"],
            },
            "device": device,
        })
    command = "python scripts/bench_mnist_classifier.py " + shlex.join(sys.argv[1:])
    notes = (f"Preset `{args.preset}` ({config.total_steps} steps of batch {config.batch_size}, Adam lr {config.lr} "
             f"cosine, random shifts of up to {config.max_shift} px); accuracy on the fixed stratified 2,000-image "
             "held-out split. Time is wall-clock seconds of the whole run including evaluation.")
    runs, _ = collect_runs([Path(args.runs) / args.preset])
    figure = plot_learning_curves(runs, "accuracy", Path(args.out) / "curves.png")
    extra = f"![held-out accuracy over training, mean and 95% band over seeds]({figure.name})\n" if figure else ""
    path = write_results(args.out, "mnist_classifier", command, records, notes=notes, extra_markdown=extra)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
