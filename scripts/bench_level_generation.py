"""Benchmark: zero-shot transfer on CaveEscape of PPO students trained with DR, uniform, PLR and DRED.

Every (method, seed) is a harness run of ``workbench rl train METHOD`` with the same number of
environment steps in its own rollouts, hence the same number of student gradient updates (DRED's
scoring rollouts of generated levels take no update, as in the paper). Evaluation is zero-shot, one
episode per level: ``in_dist`` (unseen levels of the four training structures) and
``held_out_structures`` (eight structures never trained on). DRED needs the level VAE: it is trained
first (``--vae-steps``) if ``--vae-run`` holds none. Resumable: finished runs are skipped and an
interrupted one continues; results.json is rewritten after each run, labelled with progress.

    python scripts/bench_level_generation.py --steps 200000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from grp_workbench.envs.levels import LAVA, MOSS, WALL, Level, is_solvable, load_levels, save_level_picture
from grp_workbench.harness.config import build_config
from grp_workbench.harness.report import write_results
from grp_workbench.harness.runs import RunDir
from grp_workbench.harness.trainer import train_cell
from grp_workbench.rl.ued.level_vae import SPEC as VAE
from grp_workbench.rl.ued.level_vae import load_level_vae
from grp_workbench.rl.ued.ppo import LEVEL_SETS, METHODS, SPECS, random_blocks_level

SETS = ("in_dist", "held_out_structures")


def level_closeness(runs: dict[tuple[str, int], RunDir], dr_blocks: int = 60) -> str:
    """How close each level source is to the training levels: the fraction of cells in which a level
    differs from its nearest training level, the cell-kind mix, and solvability. Sources: unseen
    levels of the training structures (the reference for "in distribution"), held-out structures,
    DR's random-block levels, and the generated levels in each DRED student's final buffer."""
    train_levels = load_levels(LEVEL_SETS / "train.npz")
    train_grids = np.stack([level.grid for level in train_levels]).reshape(len(train_levels), -1)
    rng = np.random.default_rng(0)
    sources: dict[str, list[Level]] = {
        "test.npz (same structures)": load_levels(LEVEL_SETS / "test.npz"),
        "held_out.npz (other structures)": load_levels(LEVEL_SETS / "held_out.npz"),
        f"DR ({dr_blocks} random blocks)": [random_blocks_level(rng, 13, dr_blocks) for _ in range(512)]}
    for (method, seed), run in sorted(runs.items()):
        if method == "dred":
            entries = run.last_algorithm_state("DRED buffer", "run the benchmark")["sampler"]["entries"]
            sources[f"DRED generated, buffer of seed {seed}"] = [e.level for e in entries if not e.from_dataset]
    lines = ["| levels | n | cells differing from the nearest training level | wall | lava | moss | solvable |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, levels in sources.items():
        if not levels:
            continue
        grids = np.stack([level.grid for level in levels]).reshape(len(levels), -1)
        nearest = np.array([(grid[None] != train_grids).mean(1).min() for grid in grids])
        kinds = [float((grids == kind).mean()) for kind in (WALL, LAVA, MOSS)]
        solvable = np.mean([is_solvable(level) for level in levels])
        lines.append(f"| {name} | {len(levels)} | {nearest.mean():.3f} (median {np.median(nearest):.3f}) | "
                     + " | ".join(f"{k:.3f}" for k in kinds) + f" | {solvable:.2f} |")
    return "\n".join(lines) + "\n"


def curves_figure(runs: dict[tuple[str, int], RunDir], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, name in zip(axes, SETS):
        for method in METHODS:
            curves = [run.read_metrics("eval") for (m, _), run in runs.items() if m == method]
            curves = [c for c in curves if c]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            steps = [row["step"] for row in curves[0][:length]]
            values = np.array([[row[f"{name}/solved_rate"] for row in c[:length]] for c in curves])
            ax.plot(steps, values.mean(0), marker=".", label=f"{method} (n={len(curves)})")
        ax.set_title(name)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("solved rate (zero-shot)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200_000, help="environment steps per run (student rollouts)")
    parser.add_argument("--eval-every", type=int, default=50_000)
    parser.add_argument("--eval-limit", type=int, default=128, help="levels per evaluation set (0 = all)")
    parser.add_argument("--vae-run", default="runs/bench/level_generation/level-vae")
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="extra student config key=value")
    parser.add_argument("--runs", default="runs/bench/level_generation")
    parser.add_argument("--out", default="benchmarks/level_generation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/bench_level_generation.py " + shlex.join(sys.argv[1:])
    if "dred" in args.methods:
        config = build_config(VAE.config_cls, VAE.presets, "paper", {"total_steps": args.vae_steps,
                                                                     "eval_every": args.vae_steps})
        vae_summary = train_cell(VAE, config, args.vae_run, "paper")
        vae = load_level_vae(args.vae_run)
        train_levels = load_levels(LEVEL_SETS / "train.npz")
        generated, _ = vae.interpolate(vae.encode_levels(train_levels), train_levels, 2, 4,
                                       torch.Generator().manual_seed(0))
        picks = np.random.default_rng(0).choice(len(train_levels), 8, replace=False)
        save_level_picture({"training": [train_levels[i] for i in picks], "DRED pair 1": generated[:4],
                            "DRED pair 2": generated[4:8]}, out / "levels.png")
    records, runs = [], {}
    cells = [(seed, method) for seed in args.seeds for method in args.methods]
    for done, (seed, method) in enumerate(cells, start=1):
        spec = SPECS[method]
        overrides = dict(item.split("=", 1) for item in args.overrides)
        config = build_config(spec.config_cls, spec.presets, "quick", {
            **overrides, "seed": seed, "total_steps": args.steps, "eval_every": args.eval_every,
            "checkpoint_every": args.eval_every, "eval_limit": args.eval_limit,
            **({"vae_run": args.vae_run} if method == "dred" else {})})
        run_dir = Path(args.runs) / method / f"seed{seed}"
        summary = train_cell(spec, config, str(run_dir), "quick")
        runs[(method, seed)] = RunDir(run_dir)
        for name in SETS:
            records.append({"method": method, "task": f"cave_escape-{name}", "seed": seed, "metrics": {
                "solved_rate": summary["final"][f"{name}/solved_rate"], "return": summary["final"][f"{name}/return"]}})
        print(f"[{done}/{len(cells)}] {method} seed {seed}: in_dist {summary['final']['in_dist/solved_rate']:.3f}, "
              f"held-out structures {summary['final']['held_out_structures/solved_rate']:.3f}", flush=True)
        curves_figure(runs, out / "curves.png")
        status = "complete" if done == len(cells) else f"PARTIAL: {done} of {len(cells)} runs done"
        vae_note = ""
        if "dred" in args.methods:
            final = vae_summary["final"]
            vae_note = (f" Level VAE ({args.vae_steps} steps): cell accuracy train {final['train/cell_accuracy']:.3f}, "
                        f"test {final.get('test/cell_accuracy', float('nan')):.3f}; decoded prior samples solvable "
                        f"{final['prior_samples/solvable']:.2f}.")
        notes = (f"{status}. CaveEscape 13x13, 512 training levels of 4 WFC structures (envs/level_sets), PPO "
                 f"(rl/ued/ppo.py, paper defaults, feed-forward core), {args.steps} environment steps per run "
                 f"({args.steps // (32 * 256)} student updates of 32 envs x 256 steps), zero-shot evaluation on "
                 f"{args.eval_limit or 'all'} levels of each set, one episode each.{vae_note}")
        extra = "![solved rate during training](curves.png)\n\n" + (
            "![training levels beside DRED's generated levels](levels.png)\n" if "dred" in args.methods else "")
        if done == len(cells) and "dred" in args.methods:
            extra += "\nHow close each level source is to the 512 training levels:\n\n" + level_closeness(runs)
        write_results(out, "level_generation", command, records, notes=notes, extra_markdown=extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
