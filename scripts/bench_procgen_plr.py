"""Benchmark (short): PLR level sampling on Procgen through the ``workbench/Procgen-v0`` adapter.

One PPO student per (sampler, seed) through the harness (``rl/ued/procgen_ppo.py``, preset
``quick`` unless told), resumable: a finished run is skipped, a killed one continues from its
checkpoint. What it shows at CPU scale is the sampler at work, not PLR's generalization gain (that
needs the 25M-step ``paper`` preset on a GPU): how PLR's replay distribution concentrates on the
levels with the largest value_l1 scores while uniform sampling stays flat, beside the return on the
training levels and on unseen levels.

    python scripts/bench_procgen_plr.py --samplers plr uniform --seeds 0
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from grp_workbench.harness.config import build_config  # noqa: E402
from grp_workbench.harness.report import write_results  # noqa: E402
from grp_workbench.harness.runs import RunDir  # noqa: E402
from grp_workbench.harness.trainer import train_cell  # noqa: E402
from grp_workbench.rl.ued.procgen_ppo import SAMPLERS, SPECS  # noqa: E402


def sampling_figure(runs: dict[tuple[str, int], RunDir], path: Path) -> None:
    """Left: episodes per training level (levels ordered by PLR's final score); right: PLR's replay
    distribution entropy during training against uniform's log N."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    order = None
    for (sampler, seed), run in sorted(runs.items()):
        state = run.last_algorithm_state("student", "run the benchmark")
        if sampler == "plr" and order is None:
            order = np.argsort(-np.where(state["sampler"]["seen"], state["sampler"]["scores"], -np.inf))
        plays = state["plays"] if order is None else state["plays"][order]
        left.bar(np.arange(len(plays)) + (0.4 if sampler == "uniform" else 0.0), plays, width=0.4,
                 label=f"{sampler} seed {seed}")
        rows = [row for row in run.read_metrics("train") if "sampler_entropy" in row]
        if rows:
            right.plot([r["step"] for r in rows], [r["sampler_entropy"] for r in rows], label=f"{sampler} seed {seed}")
            right.axhline(np.log(len(plays)), color="gray", linestyle=":", label="uniform (log N)")
    left.set(xlabel="training level (by PLR's final value_l1 score, highest first)", ylabel="episodes started")
    right.set(xlabel="environment steps", ylabel="entropy of PLR's replay distribution (nats)")
    left.legend()
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path.with_suffix(".tmp.png"), dpi=110)
    plt.close(fig)
    path.with_suffix(".tmp.png").replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--env-name", default="maze")
    parser.add_argument("--runs", default="runs/bench/procgen_plr")
    parser.add_argument("--out", default="benchmarks/procgen_plr")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    command = "python scripts/bench_procgen_plr.py " + shlex.join(sys.argv[1:])
    records, runs = [], {}
    cells = [(seed, sampler) for seed in args.seeds for sampler in args.samplers]
    for done, (seed, sampler) in enumerate(cells, start=1):
        spec = SPECS[f"procgen-{sampler}"]
        config = build_config(spec.config_cls, spec.presets, args.preset, {"seed": seed, "env_name": args.env_name})
        run_dir = Path(args.runs) / sampler / f"seed{seed}"
        summary = train_cell(spec, config, str(run_dir), args.preset)
        runs[(sampler, seed)] = RunDir(run_dir)
        for split in ("train", "test"):
            records.append({"method": sampler, "task": f"procgen-{args.env_name}-{split}_levels", "seed": seed,
                            "metrics": {"return": summary["final"][f"{split}/return"],
                                        "solved_rate": summary["final"][f"{split}/solved_rate"]}})
        print(f"[{done}/{len(cells)}] {sampler} seed {seed}: train return {summary['final']['train/return']:.2f}, "
              f"test {summary['final']['test/return']:.2f}", flush=True)
        sampling_figure(runs, out / "sampling.png")
        status = "complete" if done == len(cells) else f"PARTIAL: {done} of {len(cells)} runs done"
        notes = (f"{status}. Procgen {args.env_name} (easy) through workbench/Procgen-v0, PPO with the IMPALA "
                 f"ResNet (rl/ued/procgen_ppo.py), preset '{args.preset}': {config.num_train_levels} training "
                 f"levels, {config.num_envs} envs x {config.num_steps} steps per update, {config.total_steps} "
                 f"environment steps per run; evaluation: one episode on each of {config.eval_levels} levels "
                 f"(training levels 0.., and unseen levels from {config.test_start_level}). A CPU-scale run that "
                 "shows PLR's level sampling, not its generalization gain (PLR: 25M steps, the paper preset).")
        write_results(out, "procgen_plr", command, records, notes=notes,
                      extra_markdown="![episodes per level and PLR's replay entropy](sampling.png)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
