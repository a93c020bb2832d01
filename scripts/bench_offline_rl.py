"""Benchmark: A2PR against TD3+BC on locally built D4RL-style datasets, plus update speed against d3rlpy.

The training grid is also declared for the shared runner (``workbench bench offline_rl``, in
rl/benchmarks.py, the same run folders); this script keeps the speed rows (``--speed``) until they move.

Cells are (task, method); each cell is one harness run training all seeds together as batched
networks (``n_seeds``), so it resumes from its checkpoint when the script is restarted and a
finished cell is skipped; a cell another copy of the command is training is left to it. Cells run
medium-replay tasks first (where the paper's gains are largest), each task's methods together.
results.json / README.md are rewritten after every cell from every finished cell of the grid
(whichever process trained it), labelled with how many cells are done. Per seed:
``normalized_score_last`` (the last evaluation) and ``normalized_score_best`` (the best evaluation
seen); scores use each dataset's stored reference returns (``local`` for data built here).

    python scripts/bench_offline_rl.py --steps 20000 --seeds 0 1 2
    # on a 2-core machine: start the same command twice; the copies share the cells (harness.runs.claim)
    python scripts/bench_offline_rl.py --tasks pointreach-medium --steps 300 --eval-every 100   # smoke test

``--speed N`` also times N gradient updates of ours (TD3+BC, A2PR; one seed, and ``--batch-seeds``
seeds batched) and of d3rlpy's ``TD3PlusBC`` on the first task's data, interleaved in this process
with the same torch threads and batch size (d3rlpy pins gymnasium 1.0; install it beside ours with
``pip install --no-deps d3rlpy==2.8.1 gym==0.26.2 gym-notices structlog dataclasses-json``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402

from grp_workbench.harness.config import build_config  # noqa: E402
from grp_workbench.harness.device import make_policy  # noqa: E402
from grp_workbench.harness.report import write_results  # noqa: E402
from grp_workbench.harness.runs import RunDir, claim  # noqa: E402
from grp_workbench.harness.trainer import train_cell  # noqa: E402
from grp_workbench.rl.benchmarks import OFFLINE_TASKS, aggregate_markdown, member_scores, plot_curves  # noqa: E402
from grp_workbench.rl.offline.a2pr import SPEC as A2PR  # noqa: E402
from grp_workbench.rl.offline.datasets import load_dataset  # noqa: E402
from grp_workbench.rl.offline.td3bc import SPEC as TD3BC  # noqa: E402

SPECS = {"a2pr": A2PR, "td3bc": TD3BC}
TASKS = OFFLINE_TASKS


def speed_records(task: str, n_updates: int, batch_seeds: int, device: str = "cpu") -> tuple[list[dict], str]:
    """updates/s of ours and d3rlpy's TD3PlusBC, alternating, two rounds each, on the same data and device."""
    import torch

    data = load_dataset(task)
    policy = make_policy(device, "fp32")

    def synchronize() -> None:  # CUDA kernels run asynchronously: time until they have finished
        if policy.device.type == "cuda":
            torch.cuda.synchronize(policy.device)

    def ours(spec, n_seeds: int):
        config = build_config(spec.config_cls, spec.presets, "paper", {"dataset": task, "n_seeds": n_seeds})
        algorithm = spec.build(config, policy)

        def run(n: int) -> float:
            synchronize()
            start = time.perf_counter()
            for _ in range(n):
                algorithm.update()
            synchronize()
            return n / (time.perf_counter() - start)

        return run

    contenders = {"td3bc": ours(TD3BC, 1), "a2pr": ours(A2PR, 1),
                  f"td3bc-{batch_seeds}seeds": ours(TD3BC, batch_seeds)}
    note = ""
    try:
        import d3rlpy
        from d3rlpy.algos import TD3PlusBCConfig
        from d3rlpy.dataset import MDPDataset

        timeouts = np.zeros(len(data), dtype=np.float32)
        timeouts[-1] = 1.0  # d3rlpy needs an episode end; transitions are sampled uniformly either way
        dataset = MDPDataset(data.observations, data.actions, data.rewards, data.dones, timeouts=timeouts)
        d3 = TD3PlusBCConfig(batch_size=256, observation_scaler=d3rlpy.preprocessing.StandardObservationScaler()
                             ).create(device=f"{policy.device.type}:{policy.device.index or 0}")
        d3.build_with_dataset(dataset)

        def run_d3(n: int) -> float:
            synchronize()
            start = time.perf_counter()
            d3.fit(dataset, n_steps=n, n_steps_per_epoch=n, show_progress=False, save_interval=10**9,
                   logger_adapter=d3rlpy.logging.NoopAdapterFactory())
            synchronize()
            return n / (time.perf_counter() - start)

        contenders["d3rlpy-td3bc"] = run_d3
    except ImportError as error:
        note = f"d3rlpy not installed ({error}); no d3rlpy row."
    for run in contenders.values():
        run(20)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(2):
        for name, run in contenders.items():
            rates[name].append(run(n_updates))
    records = [{"method": name, "task": task, "seed": 0, "metrics": {"updates_per_s": float(np.mean(r))}}
               for name, r in rates.items()]
    return records, note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--methods", nargs="+", default=["td3bc", "a2pr"], choices=sorted(SPECS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="consecutive seeds, batched")
    parser.add_argument("--steps", type=int, default=20_000, help="gradient steps per run")
    parser.add_argument("--eval-every", type=int, default=5000)
    parser.add_argument("--speed", type=int, default=0, help="also time this many updates per contender")
    parser.add_argument("--batch-seeds", type=int, default=5)
    parser.add_argument("--speed-only", action="store_true", help="only the speed rows (no training cells)")
    parser.add_argument("--device", default="cpu", help="device of the speed rows (cpu | cuda)")
    parser.add_argument("--runs", default="runs/bench/offline_rl")
    parser.add_argument("--out", default="benchmarks/offline_rl")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the finished cells of this command, train nothing")
    parser.add_argument("--note", default="", help="text for the report (e.g. why this step budget)")
    args = parser.parse_args()
    if args.seeds != list(range(args.seeds[0], args.seeds[0] + len(args.seeds))):
        raise SystemExit(f"--seeds {args.seeds}: batched seeds must be consecutive (e.g. 0 1 2)")
    out = Path(args.out)
    command = "python scripts/bench_offline_rl.py " + shlex.join(a for a in sys.argv[1:] if a != "--report-only")
    cells = [] if args.speed_only else [(task, method) for task in args.tasks for method in args.methods]
    notes: list[str] = [args.note] if args.note else []
    for task, method in [] if args.report_only else cells:
        run_dir = cell_dir(args, task, method)
        with claim(run_dir) as mine:
            if not mine:
                print(f"{task} {method}: another process is training it; next cell", flush=True)
                continue
            spec = SPECS[method]
            config = build_config(spec.config_cls, spec.presets, "paper", {
                "dataset": task, "seed": args.seeds[0], "n_seeds": len(args.seeds), "total_steps": args.steps,
                "eval_every": args.eval_every, "checkpoint_every": args.eval_every})
            summary = train_cell(spec, config, str(run_dir), "paper")
        records, curves = finished_cells(args, cells)
        done = len(curves)
        _, scores = curves.get((method, task), (None, np.zeros((0, 0))))
        print(f"[{done}/{len(cells)}] {task} {method}: last {scores[:, -1].round(1).tolist()} "
              f"({summary['throughput']['steps_per_s']:.1f} steps/s, scores {load_dataset(task).score_source})",
              flush=True)
        write(out, command, records, curves, args, done, len(cells), notes)
    records, curves = finished_cells(args, cells)
    if args.speed:
        speed, note = speed_records(args.tasks[0], args.speed, args.batch_seeds, args.device)
        for row in speed:  # one record per (method, task, seed): speed joins the first seed's scores
            same = [r for r in records if (r["method"], r["task"], r["seed"]) == (row["method"], row["task"],
                                                                                  args.seeds[0])]
            if same:
                same[0]["metrics"] |= row["metrics"]
            else:
                records.append({**row, "seed": args.seeds[0]})
        notes += [note] if note else []
        notes.append(speed_summary(speed, args))
        print(json.dumps([(r["method"], r["metrics"]) for r in speed]), flush=True)
    if cells or args.speed:
        write(out, command, records, curves, args, len(curves), len(cells), notes)
    return 0


def cell_dir(args, task: str, method: str) -> Path:
    return Path(args.runs) / task / f"{method}-seeds{args.seeds[0]}-{args.seeds[-1]}"


def finished_cells(args, cells: list[tuple[str, str]]) -> tuple[list[dict], dict]:
    """Records and learning curves of every finished cell with this command's step budget."""
    records, curves = [], {}
    for task, method in cells:
        run = RunDir(cell_dir(args, task, method))
        if not run.is_finished() or run.header["config"]["total_steps"] != args.steps:
            continue
        steps, scores = member_scores(run, args.seeds)
        curves[(method, task)] = (steps, scores)
        for seed, row in zip(args.seeds, scores):
            records.append({"method": method, "task": task, "seed": seed, "metrics": {
                "normalized_score_last": float(row[-1]), "normalized_score_best": float(row.max())}})
    return records, curves


def speed_summary(speed: list[dict], args) -> str:
    """The two ratios the issue sets targets for, from the speed rows of one process."""
    rate = {r["method"]: r["metrics"]["updates_per_s"] for r in speed}
    parts = [f"Speed on {args.device}: {args.speed} updates per contender, 2 interleaved rounds after a warm-up, "
             "one process, batch 256, fp32; " + ", ".join(f"{k} {v:.0f}" for k, v in rate.items()) + " updates/s."]
    if "d3rlpy-td3bc" in rate:
        parts.append(f"TD3+BC ours / d3rlpy: {rate['td3bc'] / rate['d3rlpy-td3bc']:.2f}x.")
    batched = f"td3bc-{args.batch_seeds}seeds"
    if batched in rate:
        parts.append(f"{args.batch_seeds} batched seeds take {rate['td3bc'] / rate[batched]:.2f}x the time of one.")
    return " ".join(parts)


def write(out: Path, command: str, records: list[dict], curves: dict, args, done: int, total: int,
          notes: list[str]) -> None:
    status = "complete" if done == total else f"PARTIAL: {done} of {total} cells done"
    extra = [aggregate_markdown(records)]
    figure = plot_curves(curves, out / "learning_curves.png")
    if figure:
        extra.append(f"![learning curves]({figure.name})")
    if args.speed_only:
        write_results(out, "offline_rl_speed", command, records, notes=" ".join(notes))
        return
    text = (f"{status}. {len(args.seeds)} seeds (batched), {args.steps} gradient steps, evaluation every "
            f"{args.eval_every} steps with 10 deterministic episodes; datasets built locally "
            "(`workbench rl data build`), normalized with their stored local random / expert returns. "
            + " ".join(notes))
    write_results(out, "offline_rl", command, records, notes=text, extra_markdown="\n\n".join(extra))


if __name__ == "__main__":
    sys.exit(main())
