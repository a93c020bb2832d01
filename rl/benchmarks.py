"""Benchmark suites of the RL domain, declared for the shared runner (``harness/bench.py``).

``offline_rl``: A2PR against TD3+BC on the nine locally built D4RL-style datasets (hopper,
halfcheetah, walker2d × medium-replay, medium, medium-expert; ``workbench rl data build``). A cell is
(task, method); each trains all seeds together as batched networks (``n_seeds``) and makes one record
per seed: ``normalized_score_last`` (the last evaluation) and ``normalized_score_best``. Run folders
``<task>/<method>-seeds<first>-<last>`` as ``scripts/bench_offline_rl.py`` made them, so its runs
resume here. Budget ``cpu``: 10,000 gradient steps, evaluation every 5,000 (the committed grid);
``paper``: 1,000,000 steps (the papers'), evaluation every 5,000.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from grp_workbench.harness.bench import BenchOptions, Cell, Suite
from grp_workbench.harness.config import build_config
from grp_workbench.harness.errors import HarnessError
from grp_workbench.harness.evaluation import mean_and_ci_over_seeds, probability_of_improvement, summarize
from grp_workbench.harness.runs import RunDir
from grp_workbench.rl.offline.a2pr import SPEC as A2PR
from grp_workbench.rl.offline.td3bc import SPEC as TD3BC

OFFLINE_SPECS = {"td3bc": TD3BC, "a2pr": A2PR}
METHOD_COLORS = {"a2pr": "C0", "td3bc": "C1"}
OFFLINE_TASKS = [f"{env}-{level}" for level in ("medium-replay", "medium", "medium-expert")
                 for env in ("hopper", "halfcheetah", "walker2d")]
OFFLINE_BUDGETS = {"cpu": {"steps": 10_000, "eval_every": 5_000}, "paper": {"steps": 1_000_000, "eval_every": 5_000}}


def member_scores(run: RunDir, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, scores[seed, eval]) from a run's evaluation rows."""
    rows = run.read_metrics("eval")
    keys = ["normalized_score"] if len(seeds) == 1 else [f"normalized_score/seed{s}" for s in seeds]
    steps = np.array([row["step"] for row in rows])
    return steps, np.array([[row[key] for row in rows] for key in keys])


def _offline_cells(options: BenchOptions) -> list[Cell]:
    seeds = list(options.seeds or (0, 1, 2))
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise HarnessError(f"--seeds {','.join(map(str, seeds))}: batched seeds must be consecutive (e.g. 0,1,2).")
    budget = OFFLINE_BUDGETS[options.budget]
    cells = []
    for task in OFFLINE_TASKS:  # medium-replay first: where the paper's gains are largest
        for method, spec in OFFLINE_SPECS.items():
            config = build_config(spec.config_cls, spec.presets, "paper", {k: str(v) for k, v in {
                "dataset": task, "seed": seeds[0], "n_seeds": len(seeds), "total_steps": budget["steps"],
                "eval_every": budget["eval_every"], "checkpoint_every": budget["eval_every"],
                "device": options.device}.items()})
            cells.append(Cell(method, task, seeds[0], spec, config, f"{task}/{method}-seeds{seeds[0]}-{seeds[-1]}",
                              members=tuple(seeds)))
    return cells


def _offline_record(cell: Cell, summary: dict[str, Any], run: RunDir) -> dict[int, dict[str, float]]:
    _, scores = member_scores(run, list(cell.members))
    return {seed: {"normalized_score_last": float(row[-1]), "normalized_score_best": float(row.max())}
            for seed, row in zip(cell.members, scores)}


def _offline_notes(options: BenchOptions) -> str:
    budget = OFFLINE_BUDGETS[options.budget]
    seeds = options.seeds or (0, 1, 2)
    return (f"{len(seeds)} seeds (batched), {budget['steps']} gradient steps, evaluation every {budget['eval_every']} "
            "steps with 10 deterministic episodes; datasets built locally (`workbench rl data build`), normalized "
            "with their stored local random / expert returns. Behaviour policies and dataset budgets: "
            "rl/offline/README.md.")


def aggregate_markdown(records: list[dict]) -> str:
    """IQM over all (seed, task) runs of each method, and the probability that A2PR's last score beats
    TD3+BC's over the tasks both finished (rliable's definitions)."""
    by = {(r["method"], r["task"], r["seed"]): r["metrics"]["normalized_score_last"] for r in records
          if "normalized_score_last" in r["metrics"]}
    tasks = sorted({t for m, t, _ in by if m == "a2pr" and any(k[0] == "td3bc" and k[1] == t for k in by)})
    seeds = sorted({s for _, _, s in by})
    if not tasks:
        return ""
    a = np.array([[by[("a2pr", t, s)] for t in tasks] for s in seeds if ("a2pr", tasks[0], s) in by])
    b = np.array([[by[("td3bc", t, s)] for t in tasks] for s in seeds if ("td3bc", tasks[0], s) in by])
    result = probability_of_improvement(a, b)
    lines = [f"Aggregate over the {len(tasks)} task(s) both methods finished ({', '.join(tasks)}): IQM of the "
             "last normalized score over all runs, 95% stratified-bootstrap CI.", "",
             "| method | runs x tasks | IQM | 95% CI | mean |", "| --- | --- | --- | --- | --- |"]
    for name, scores in (("a2pr", a), ("td3bc", b)):
        stats = summarize(scores)
        lines.append(f"| {name} | {scores.shape[0]} x {scores.shape[1]} | {stats['iqm']:.1f} | "
                     f"[{stats['iqm_ci95'][0]:.1f}, {stats['iqm_ci95'][1]:.1f}] | {stats['mean']:.1f} |")
    lines += ["", f"P(A2PR > TD3+BC) on the last normalized score, over {len(tasks)} task(s): "
              f"{result['probability']:.3f} (95% CI [{result['ci95'][0]:.3f}, {result['ci95'][1]:.3f}])."]
    return "\n".join(lines)


def plot_curves(curves: dict, path: Path) -> Path | None:
    """One panel per task: mean normalized score over seeds with a bootstrap 95% band, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({task for _, task in curves})
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (method, t), (steps, scores) in sorted(curves.items()):
            if t == task:
                mean, low, high = mean_and_ci_over_seeds(scores)
                color = METHOD_COLORS.get(method)  # the same colour for a method in every panel
                ax.plot(steps, mean, label=f"{method} (n={len(scores)})", color=color, marker="o")
                ax.fill_between(steps, low, high, alpha=0.25, color=color)
        ax.set_title(task)
        ax.set_xlabel("gradient step")
        ax.set_ylabel("normalized score")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _medium_replay_claim(records: list[dict]) -> str:
    """A2PR's paper reports its largest gains over TD3+BC on the medium-replay datasets."""
    wins, compared = [], 0
    for task in (t for t in OFFLINE_TASKS if t.endswith("medium-replay")):
        scores = {m: [r["metrics"]["normalized_score_last"] for r in records if (r["method"], r["task"]) == (m, task)]
                  for m in OFFLINE_SPECS}
        if all(scores.values()):
            compared += 1
            iqm = {m: summarize(v)["iqm"] for m, v in scores.items()}
            wins.append(f"{task} {iqm['a2pr']:.1f} vs {iqm['td3bc']:.1f}")
            wins[-1] += " (A2PR ahead)" if iqm["a2pr"] > iqm["td3bc"] else " (TD3+BC ahead)"
    if not compared:
        return "A2PR >= TD3+BC, largest gains on medium-replay (paper): no medium-replay task finished yet."
    ahead = sum("A2PR ahead" in w for w in wins)
    verdict = "agrees" if ahead == compared else "does not agree" if ahead == 0 else "agrees on some tasks only"
    return (f"A2PR >= TD3+BC, largest gains on medium-replay (paper): the measured direction {verdict}; last "
            f"normalized score IQM, A2PR vs TD3+BC: {'; '.join(wins)}.")


def _offline_extra(options: BenchOptions, cells: list[Cell], records: list[dict[str, Any]]) -> str:
    """The aggregate over every record (carried-over ones too) and the curves of the runs here."""
    from grp_workbench.harness.bench import is_done

    curves = {(cell.method, cell.task): member_scores(RunDir(OFFLINE_RL.run_root(options) / cell.run),
                                                      list(cell.members))
              for cell in cells if is_done(OFFLINE_RL, options, cell)}
    parts = [aggregate_markdown(records)]
    figure = plot_curves(curves, OFFLINE_RL.out_dir(options) / "learning_curves.png")
    if figure:
        parts.append(f"![learning curves]({figure.name})")
    return "\n\n".join(p for p in parts if p)


OFFLINE_RL = Suite(
    name="offline_rl",
    title="A2PR (adaptive advantage-guided policy regularization) against TD3+BC on D4RL-style locomotion data",
    grid=_offline_cells, record=_offline_record, headline="normalized_score_last", notes=_offline_notes,
    claims=(_medium_replay_claim,), extra_markdown=_offline_extra,
)
