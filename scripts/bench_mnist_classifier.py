"""Benchmark: the small CNN on MNIST, through the shared runner (``workbench bench mnist_classifier``).

The suite is declared in ``federated/benchmarks.py``; this wrapper keeps the old command working:

    python scripts/bench_mnist_classifier.py --preset quick --seeds 0 1 2
    # is: workbench bench mnist_classifier --budget cpu --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import sys

from grp_workbench.harness.bench import BenchOptions, run_suite


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=["quick", "paper"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", default="")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    budget = {"quick": "cpu", "paper": "paper"}[args.preset]
    options = BenchOptions(budget=budget, seeds=tuple(args.seeds), runs=args.runs, out=args.out, device=args.device)
    command = f"workbench bench mnist_classifier --budget {budget} --seeds {','.join(map(str, args.seeds))}"
    run_suite("mnist_classifier", options, command=command, quiet=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
