"""Benchmark suites of the RL domain, declared for the shared runner (``harness/bench.py``).

``offline_rl``: A2PR against TD3+BC on the nine locally built D4RL-style datasets (hopper,
halfcheetah, walker2d × medium-replay, medium, medium-expert; ``workbench rl data build``). A cell is
(task, method); each trains all seeds together as batched networks (``n_seeds``) and makes one record
per seed: ``normalized_score_last`` (the last evaluation) and ``normalized_score_best``. Run folders
``<task>/<method>-seeds<first>-<last>`` as the former script made them, so its runs resume here.
Budget ``cpu``: 10,000 gradient steps, evaluation every 5,000 (the committed grid); ``paper``:
1,000,000 steps (the papers'), evaluation every 5,000.

``level_generation`` (DRED against DR, uniform and PLR on CaveEscape; its level VAE is trained first),
``procgen_plr`` (PLR's level sampling on Procgen maze) and ``offline_rl_speed`` (update speed beside
d3rlpy, one measured cell) follow below.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from grp_workbench.harness.bench import (
    BenchOptions,
    Cell,
    Suite,
    cell_iqm,
    cell_iqm_text,
    cell_values,
    eval_histories,
    figure_link,
    is_done,
    paper_table,
    seed_runs,
)
from grp_workbench.harness.config import build_config
from grp_workbench.harness.errors import HarnessError
from grp_workbench.harness.evaluation import iqm_ci, mean_and_ci_over_seeds, probability_of_improvement, summarize
from grp_workbench.harness.runs import RunDir, atomic_write_text
from grp_workbench.rl.offline.a2pr import SPEC as A2PR
from grp_workbench.rl.offline.bc import SPEC as BC
from grp_workbench.rl.offline.td3bc import SPEC as TD3BC

OFFLINE_SPECS = {"td3bc": TD3BC, "a2pr": A2PR, "bc": BC}  # BC: the control (does either beat cloning?)
METHOD_COLORS = {"a2pr": "C0", "td3bc": "C1", "bc": "C7"}
OFFLINE_TASKS = [f"{env}-{level}" for level in ("medium-replay", "medium", "medium-expert")
                 for env in ("hopper", "halfcheetah", "walker2d")]
OFFLINE_BUDGETS = {"cpu": {"steps": 10_000, "eval_every": 5_000}, "paper": {"steps": 1_000_000, "eval_every": 5_000}}
# A second table at 10x the cpu budget where the paper claims its largest gains (medium-replay) and
# where A2PR collapsed at 10k (hopper-medium); its tasks are named <dataset>-<steps>k
LONG_TASKS = ["hopper-medium-replay", "halfcheetah-medium-replay", "walker2d-medium-replay", "hopper-medium"]
LONG_BUDGETS = {"cpu": {"steps": 100_000, "eval_every": 10_000}, "paper": {}}
LASTK = 3  # normalized_score_lastk: the mean of the last k evaluations (CORL reports more than the last one)


def member_scores(rows: list[dict[str, Any]], seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, scores[seed, eval]) from a run's evaluation rows."""
    keys = ["normalized_score"] if len(seeds) == 1 else [f"normalized_score/seed{s}" for s in seeds]
    steps = np.array([row["step"] for row in rows])
    return steps, np.array([[row[key] for row in rows] for key in keys])


def _offline_cells(options: BenchOptions) -> list[Cell]:
    grids = [(OFFLINE_TASKS, OFFLINE_BUDGETS[options.budget], "")]
    if LONG_BUDGETS[options.budget]:
        long = LONG_BUDGETS[options.budget]
        grids.append((LONG_TASKS, long, f"-{long['steps'] // 1000}k"))
    cells = []
    for tasks, budget, suffix in grids:
        for task in tasks:  # medium-replay first: where the paper's gains are largest
            for method, spec in OFFLINE_SPECS.items():
                for seeds in seed_runs(options, (0, 1, 2)):
                    config = build_config(spec.config_cls, spec.presets, "paper", {k: str(v) for k, v in {
                        "dataset": task, "seed": seeds[0], "n_seeds": len(seeds), "total_steps": budget["steps"],
                        "eval_every": budget["eval_every"], "checkpoint_every": budget["eval_every"],
                        "device": options.device}.items()})
                    cells.append(Cell(method, task + suffix, seeds[0], spec, config,
                                      f"{task}{suffix}/{method}-seeds{seeds[0]}-{seeds[-1]}", members=seeds))
    return cells


def _offline_record(cell: Cell, summary: dict[str, Any], run: RunDir) -> dict[int, dict[str, float]]:
    _, scores = member_scores(run.read_metrics("eval"), list(cell.members))
    return {seed: {"normalized_score_last": float(row[-1]), "normalized_score_best": float(row.max()),
                   "normalized_score_lastk": float(row[-LASTK:].mean())}
            for seed, row in zip(cell.members, scores)}


def _offline_notes(options: BenchOptions) -> str:
    budget, long = OFFLINE_BUDGETS[options.budget], LONG_BUDGETS[options.budget]
    seeds = sorted(set(options.seeds or ()) | {0, 1, 2})  # records of other seeds are kept (write_suite_results)
    # how the committed records were trained, not how this invocation groups its seeds: a report written
    # by a run of some seeds alone describes the records of every earlier run too
    grouping = "batched in one run" + (f", except A2PR's {long['steps'] // 1000}k cells: one seed per run "
                                       "(`--seeds-per-run 1`)" if long else "")
    second = (f" The second table: {long['steps']} gradient steps on {', '.join(LONG_TASKS)} (tasks named "
              f"<dataset>-{long['steps'] // 1000}k), evaluation every {long['eval_every']}; its headline is "
              f"normalized_score_lastk, the mean of the last {LASTK} evaluations.") if long else ""
    return (f"{len(seeds)} seeds ({grouping}; a cell's run folder names the seeds it trained together, and a seed "
            "trained alone is not bit-identical to the same seed as a batched member, rl/common/networks.py), "
            f"{budget['steps']} gradient steps, evaluation every {budget['eval_every']} "
            "steps with 10 deterministic episodes, each seed on its own start states (runs made before commit df65221, "
            "the first 18 cells, evaluated every seed on the first seed's); BC (plain behaviour cloning, "
            "rl/offline/bc.py) is the control. Datasets built locally (`workbench rl data build`), normalized with "
            "their stored local random / expert returns. Behaviour policies and dataset budgets: "
            f"rl/offline/README.md.{second}")


def _offline_tables(records: list[dict[str, Any]]) -> str:
    """The committed budget (rows = methods, columns = the nine datasets), then the longer budget."""
    methods = [m for m in OFFLINE_SPECS if any(r["method"] == m for r in records)]
    parts = [f"{OFFLINE_BUDGETS['cpu']['steps'] // 1000}k gradient steps, `normalized_score_last`:\n\n"
             + paper_table(records, "normalized_score_last", methods, OFFLINE_TASKS)]
    long_tasks = [f"{t}-{LONG_BUDGETS['cpu']['steps'] // 1000}k" for t in LONG_TASKS]
    if any(r["task"] in long_tasks for r in records):
        parts.append(f"{LONG_BUDGETS['cpu']['steps'] // 1000}k gradient steps, `normalized_score_lastk` (mean of "
                     f"the last {LASTK} evaluations):\n\n"
                     + paper_table(records, "normalized_score_lastk", methods, long_tasks))
    return "\n\n".join(parts)


def aggregate_markdown(records: list[dict]) -> str:
    """IQM over all (seed, task) runs of each method, and the probability that A2PR's last score beats
    TD3+BC's over the tasks both finished (rliable's definitions)."""
    by = {(r["method"], r["task"], r["seed"]): r["metrics"]["normalized_score_last"] for r in records
          if "normalized_score_last" in r["metrics"] and r["task"] in OFFLINE_TASKS}
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
    control = [("bc", np.array([[by[("bc", t, s)] for t in tasks] for s in seeds]))] if all(
        ("bc", t, s) in by for t in tasks for s in seeds) else []
    for name, scores in (("a2pr", a), ("td3bc", b), *control):
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
        iqm = {m: cell_iqm(records, m, task, "normalized_score_last") for m in ("a2pr", "td3bc")}
        if None not in iqm.values():
            compared += 1
            wins.append(f"{task} {iqm['a2pr']:.1f} vs {iqm['td3bc']:.1f}")
            wins[-1] += " (A2PR ahead)" if iqm["a2pr"] > iqm["td3bc"] else " (TD3+BC ahead)"
    if not compared:
        return "A2PR >= TD3+BC, largest gains on medium-replay (paper): no medium-replay task finished yet."
    ahead = sum("A2PR ahead" in w for w in wins)
    verdict = "agrees" if ahead == compared else "does not agree" if ahead == 0 else "agrees on some tasks only"
    return (f"A2PR >= TD3+BC, largest gains on medium-replay (paper, 1M steps): at "
            f"{OFFLINE_BUDGETS['cpu']['steps'] // 1000}k steps the measured direction {verdict} (1% of the paper's "
            f"budget: early training, not a test of the claim); last normalized score IQM, A2PR vs TD3+BC: "
            f"{'; '.join(wins)}.")


def _beyond_cloning_claim(records: list[dict]) -> str:
    """Offline RL's premise: TD3+BC and A2PR improve on cloning the data (the BC control)."""
    rows = []
    for method in ("td3bc", "a2pr"):
        ahead, compared = 0, 0
        for task in OFFLINE_TASKS:
            ours, control = (cell_iqm(records, m, task, "normalized_score_last") for m in (method, "bc"))
            if ours is not None and control is not None:
                compared += 1
                ahead += ours > control
        if compared:
            rows.append(f"{method} above BC on {ahead} of {compared} datasets")
    if not rows:
        return "TD3+BC and A2PR beyond behaviour cloning (the premise): no BC control measured yet."
    return (f"TD3+BC and A2PR beyond behaviour cloning at {OFFLINE_BUDGETS['cpu']['steps'] // 1000}k steps "
            f"(the premise of both papers): {'; '.join(rows)} (last normalized score, IQM over seeds).")


def _long_budget_claim(records: list[dict]) -> str:
    """The paper's largest gains are on medium-replay: does A2PR pull ahead at 10x the budget?"""
    suffix = f"-{LONG_BUDGETS['cpu']['steps'] // 1000}k"
    rows = []
    for task in (t + suffix for t in LONG_TASKS if t.endswith("medium-replay")):
        values = {m: cell_values(records, m, task, "normalized_score_lastk") for m in ("a2pr", "td3bc")}
        if all(values.values()):
            (ours, our_low, our_high), (theirs, their_low, their_high) = (iqm_ci(values[m]) for m in values)
            # one lucky seed moves an IQM over 3 seeds far: say whether the intervals even separate
            separated = our_low > their_high or their_low > our_high
            rows.append(f"{task} {ours:.1f} [{our_low:.1f}, {our_high:.1f}] (n={len(values['a2pr'])}) vs "
                        f"{theirs:.1f} [{their_low:.1f}, {their_high:.1f}] (n={len(values['td3bc'])}), "
                        f"{'A2PR' if ours > theirs else 'TD3+BC'} ahead"
                        f"{'' if separated else ', the 95% CIs overlap'}")
    if not rows:
        return (f"A2PR > TD3+BC on medium-replay at {LONG_BUDGETS['cpu']['steps'] // 1000}k steps: not measured yet "
                "(one A2PR seed at 100k steps takes 1-1.5 hours of both cores of a 2-core machine; see the README).")
    return (f"A2PR > TD3+BC on medium-replay, {suffix[1:]} steps (A2PR vs TD3+BC, lastk IQM over the seeds "
            f"finished): {'; '.join(rows)}.")


def _offline_extra(options: BenchOptions, cells: list[Cell], records: list[dict[str, Any]]) -> str:
    """The aggregate over every record (carried-over ones too), and per budget the learning curves
    (and, for the longer budget, the drift at every evaluation), drawn from eval_history.json: the
    evaluation rows of every cell finished here, kept in the results folder so that the figures
    outlive the runs. A figure is redrawn when a cell of its table is new to that file; a recorded
    (method, task) whose rows were never kept (runs deleted before the file existed) is named
    under the figure, not drawn."""
    histories = eval_histories(OFFLINE_RL, options, cells,
                               lambda key: key.startswith(("normalized_score", "drift/")))
    out = OFFLINE_RL.out_dir(options)
    fresh = {c.run for c in cells if c.measure is None and is_done(OFFLINE_RL, options, c)}
    recorded = {(r["method"], r["task"]) for r in records}
    parts = [aggregate_markdown(records)]
    long_tasks = {f"{t}-{LONG_BUDGETS['cpu']['steps'] // 1000}k" for t in LONG_TASKS}
    for group, name in ((OFFLINE_TASKS, "learning_curves"), (sorted(long_tasks), "learning_curves_100k")):
        kept = {run: h for run, h in histories.items() if h["task"] in group and (h["method"], h["task"]) in recorded}
        if fresh & set(kept):
            plot_curves(merged_curves(kept.values()), out / f"{name}.png")
            if name.endswith("100k"):
                plot_drift(merged_drift(kept.values()), out / "drift_100k.png")
        budget = name.removeprefix("learning_curves")[1:] or "10k"
        parts.append(figure_link(out / f"{name}.png", f"learning curves ({budget} steps)", out))
        lost = sorted(f"{m} {t}" for m, t in recorded if t in group) if not kept else sorted(
            f"{m} {t}" for m, t in recorded - {(h["method"], h["task"]) for h in kept.values()} if t in group)
        if kept and lost:
            parts.append(f"Not in the {budget}-step figures (their evaluation rows were not kept, only their "
                         f"records): {', '.join(lost)}.")
    parts.append(figure_link(out / "drift_100k.png", "drift from the data at every evaluation (100k steps)", out))
    if (out / "policy_drift.md").is_file():  # measured by `workbench rl drift` on the runs, kept beside
        parts.append("How far each policy drifts from the data, per seed: [policy_drift.md](policy_drift.md).")
    return "\n\n".join(p.strip() for p in parts if p)


def merged_curves(histories: Iterable[dict[str, Any]]) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(method, task) -> (steps, scores[seed, eval]) over every kept run of it (seeds trained in
    separate runs are rows of one array; runs evaluated at other steps are left out)."""
    merged: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for history in histories:
        steps, scores = member_scores(history["rows"], history["seeds"])
        key = (history["method"], history["task"])
        if key not in merged:
            merged[key] = (steps, scores)
        elif np.array_equal(merged[key][0], steps):
            merged[key] = (steps, np.concatenate([merged[key][1], scores]))
    return merged


def merged_drift(histories: Iterable[dict[str, Any]]) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(method, task) -> (steps, action MSE to the data) averaged over the kept runs of it, each run
    weighted by its seeds (a batched run logs its members' mean)."""
    sums: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, int]] = {}
    for history in histories:
        rows = [r for r in history["rows"] if "drift/action_mse" in r]
        if not rows:
            continue
        steps = np.array([r["step"] for r in rows])
        values = np.array([r["drift/action_mse"] for r in rows]) * len(history["seeds"])
        key = (history["method"], history["task"])
        if key not in sums:
            sums[key] = (steps, values, len(history["seeds"]))
        elif np.array_equal(sums[key][0], steps):
            sums[key] = (steps, sums[key][1] + values, sums[key][2] + len(history["seeds"]))
    return {key: (steps, total / n) for key, (steps, total, n) in sums.items()}


def plot_drift(drift: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], path: Path) -> Path | None:
    """Per task: the policy's mean squared distance from the data's actions at every evaluation,
    per method (mean over seeds, ``merged_drift``), so one sees whether drift shrinks as the critic
    matures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({task for _, task in drift})
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.2), squeeze=False)
    drawn = False
    for ax, task in zip(axes[0], tasks):
        for (method, t), (steps, values) in sorted(drift.items()):
            if t == task:
                ax.plot(steps, values, marker="o", label=method, color=METHOD_COLORS.get(method))
                drawn = True
        ax.set(title=task, xlabel="gradient step", ylabel="action MSE to the data")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if not drawn:
        plt.close(fig)
        return None
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


OFFLINE_RL = Suite(
    name="offline_rl",
    title="A2PR (adaptive advantage-guided policy regularization) against TD3+BC on D4RL-style locomotion data",
    grid=_offline_cells, record=_offline_record, headline="normalized_score_last", notes=_offline_notes,
    claims=(_medium_replay_claim, _beyond_cloning_claim, _long_budget_claim), extra_markdown=_offline_extra,
    tables=_offline_tables,
)


# ---- level_generation: DR, uniform, PLR and DRED students on CaveEscape -------------------------------
LEVEL_SETS_EVALUATED = ("in_dist", "held_out_structures")
UED_METHODS = ("dr", "uniform", "plr", "dred")
# the committed grid: 400k environment steps (48 student updates), evaluation on every held-out level
# (112 = 14 structures x 8) and 112 test levels (28 per structure), the learning rate and entropy
# bonus the CPU budget needed (rl/ued/README.md)
LEVEL_BUDGETS = {
    "cpu": {"preset": "quick", "student": {"total_steps": 400_000, "eval_every": 100_000, "checkpoint_every": 100_000,
                                           "eval_limit": 112, "lr": 0.0005, "entropy_coef": 0.01},
            "vae_preset": "paper", "vae": {"total_steps": 3000, "eval_every": 3000}},
    "paper": {"preset": "paper", "student": {}, "vae_preset": "paper", "vae": {}},
    "tiny": {"preset": "tiny", "student": {}, "vae_preset": "tiny", "vae": {}},  # seconds: a smoke test
}


def _vae_cell_config(options: BenchOptions):
    from grp_workbench.rl.ued.level_vae import SPEC as VAE

    budget = LEVEL_BUDGETS[options.budget]
    return VAE, build_config(VAE.config_cls, VAE.presets, budget["vae_preset"],
                             {k: str(v) for k, v in budget["vae"].items()})


def _level_cells(options: BenchOptions) -> list[Cell]:
    from grp_workbench.rl.ued.ppo import SPECS as UED_SPECS

    budget = LEVEL_BUDGETS[options.budget]
    # DRED reads the VAE by path: absolute, so every executor (and a Ray node) builds the same config
    vae_run = str((LEVEL_GENERATION.run_root(options) / "level-vae").resolve())
    structures = _set_structures()
    cells = []
    for seed in options.seeds or (0, 1, 2):
        for method in UED_METHODS:
            spec = UED_SPECS[method]
            values = {**budget["student"], "seed": seed, "device": options.device,
                      **({"vae_run": vae_run} if method == "dred" else {})}
            config = build_config(spec.config_cls, spec.presets, budget["preset"],
                                  {k: str(v) for k, v in values.items()})
            tasks = [f"cave_escape-{name}" for name in LEVEL_SETS_EVALUATED] + [
                structure_task(name, structure) for name in LEVEL_SETS_EVALUATED for structure in structures[name]]
            cells.append(Cell(method, "cave_escape-in_dist", seed, spec, config, f"{method}/seed{seed}",
                              preset=budget["preset"], outputs=tuple((method, task, seed) for task in tasks)))
    return cells


# results names of the two evaluated sets' structures (issue 18): cave_escape-test-<S>, cave_escape-held_out-<S>
STRUCTURE_TASK_PREFIX = {"in_dist": "test", "held_out_structures": "held_out"}


def structure_task(set_name: str, structure: str) -> str:
    return f"cave_escape-{STRUCTURE_TASK_PREFIX[set_name]}-{structure}"


@functools.lru_cache(maxsize=1)
def _set_structures() -> dict[str, list[str]]:
    """The structures of each evaluated set, in the set's order (read from the shipped level files)."""
    from grp_workbench.envs.levels import load_levels
    from grp_workbench.rl.ued.ppo import LEVEL_SETS

    files = {"in_dist": "test.npz", "held_out_structures": "held_out.npz"}
    return {name: list(dict.fromkeys(level.structure for level in load_levels(LEVEL_SETS / files[name])))
            for name in LEVEL_SETS_EVALUATED}


def _level_record(cell: Cell, summary: dict[str, Any], run: RunDir) -> dict[tuple, dict[str, float]]:
    """The two aggregate tasks and one task per structure (solved rate; return where the run logged it)."""
    final = summary["final"]
    records = {(cell.method, f"cave_escape-{name}", cell.seed): {"solved_rate": final[f"{name}/solved_rate"],
                                                                "return": final[f"{name}/return"]}
               for name in LEVEL_SETS_EVALUATED}
    for _, task, _ in cell.outputs:
        for name in LEVEL_SETS_EVALUATED:
            prefix = f"cave_escape-{STRUCTURE_TASK_PREFIX[name]}-"
            if task.startswith(prefix):
                structure = task.removeprefix(prefix)
                metrics = {"solved_rate": final[f"{name}/solved_rate/{structure}"]}
                if f"{name}/return/{structure}" in final:
                    metrics["return"] = final[f"{name}/return/{structure}"]
                records[(cell.method, task, cell.seed)] = metrics
    return records


def _level_tables(records: list[dict[str, Any]]) -> str:
    """The aggregate table (methods x sets), then per-structure solved rates (structures x methods)."""
    from grp_workbench.harness.bench import paper_table

    parts = [paper_table(records, "solved_rate", list(UED_METHODS), [f"cave_escape-{n}" for n in LEVEL_SETS_EVALUATED])]
    for name, title in (("in_dist", "test.npz (the four training structures, unseen levels)"),
                        ("held_out_structures", "held_out.npz (the paper's 14 held-out structures)")):
        prefix = f"cave_escape-{STRUCTURE_TASK_PREFIX[name]}-"
        structures = sorted({r["task"].removeprefix(prefix) for r in records if r["task"].startswith(prefix)})
        if not structures:
            continue
        rows = [f"| {s} | " + " | ".join(cell_iqm_text(records, m, prefix + s, "solved_rate", digits=3)
                                         for m in UED_METHODS) + " |" for s in structures]
        parts.append(f"Solved rate per structure, {title}; IQM [95% CI] over seeds:\n\n"
                     f"| structure | {' | '.join(UED_METHODS)} |\n| --- |{' --- |' * len(UED_METHODS)}\n"
                     + "\n".join(rows))
    return "\n\n".join(parts)


def _prepare_level_generation(options: BenchOptions, todo: list[Cell]) -> None:
    """DRED's level VAE, trained once before any DRED student, and a picture of what it generates."""
    if not any(cell.method == "dred" for cell in todo):
        return
    import torch

    from grp_workbench.envs.levels import load_levels, save_level_picture
    from grp_workbench.harness.trainer import train_cell
    from grp_workbench.rl.ued.level_vae import load_level_vae
    from grp_workbench.rl.ued.ppo import LEVEL_SETS

    spec, config = _vae_cell_config(options)
    vae_run = LEVEL_GENERATION.run_root(options) / "level-vae"
    train_cell(spec, config, str(vae_run), LEVEL_BUDGETS[options.budget]["vae_preset"], quiet=False)
    vae = load_level_vae(str(vae_run))
    train_levels = load_levels(LEVEL_SETS / "train.npz")
    generated, _ = vae.interpolate(vae.encode_levels(train_levels), train_levels, 2, 4,
                                   torch.Generator().manual_seed(0))
    picks = np.random.default_rng(0).choice(len(train_levels), 8, replace=False)
    out = LEVEL_GENERATION.out_dir(options)
    out.mkdir(parents=True, exist_ok=True)
    save_level_picture({"training": [train_levels[i] for i in picks], "DRED pair 1": generated[:4],
                        "DRED pair 2": generated[4:8]}, out / "levels.png")


def level_closeness(dred_runs: dict[int, RunDir], dr_blocks: int = 60) -> str:
    """How close each level source is to the training levels: the fraction of cells in which a level
    differs from its nearest training level, the cell-kind mix, and solvability. Sources: unseen
    levels of the training structures (the reference for "in distribution"), held-out structures,
    DR's random-block levels, and the generated levels in each DRED student's final buffer."""
    from grp_workbench.envs.levels import LAVA, MOSS, WALL, is_solvable, load_levels
    from grp_workbench.rl.ued.ppo import LEVEL_SETS, random_blocks_level

    train_levels = load_levels(LEVEL_SETS / "train.npz")
    train_grids = np.stack([level.grid for level in train_levels]).reshape(len(train_levels), -1)
    rng = np.random.default_rng(0)
    sources = {"test.npz (same structures)": load_levels(LEVEL_SETS / "test.npz"),
               "held_out.npz (other structures)": load_levels(LEVEL_SETS / "held_out.npz"),
               f"DR (U[0, {dr_blocks}) random blocks)": [random_blocks_level(rng, 13, dr_blocks) for _ in range(512)]}
    for seed, run in sorted(dred_runs.items()):
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


def _solved_curves_figure(runs: dict[tuple[str, int], RunDir], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, name in zip(axes, LEVEL_SETS_EVALUATED):
        for method in UED_METHODS:
            curves = [c for c in (run.read_metrics("eval") for (m, _), run in runs.items() if m == method) if c]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            steps = [row["step"] for row in curves[0][:length]]
            values = np.array([[row[f"{name}/solved_rate"] for row in c[:length]] for c in curves])
            ax.plot(steps, values.mean(0), marker=".", label=f"{method} (n={len(curves)})")
        ax.set(title=name, xlabel="environment steps", ylabel="solved rate (zero-shot)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _buffer_figure(dred_runs: dict[int, RunDir], path: Path) -> Path | None:
    """Per DRED seed, over training: generated levels proposed and admitted per update, the solvable
    share of the proposals, and the probability the replay distribution gives the training levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("generated_kept", "admitted per update"), ("generated_solvable", "solvable share of proposals"),
              ("replay_dataset_mass", "replay mass on training levels"))
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.6))
    drawn = False
    for seed, run in sorted(dred_runs.items()):
        rows = [r for r in run.read_metrics("train") if "generated_kept" in r]
        for ax, (key, label) in zip(axes, panels):
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), label=f"seed {seed}")
                ax.set(xlabel="environment steps", ylabel=label)
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _level_notes(options: BenchOptions) -> str:
    budget = LEVEL_BUDGETS[options.budget]
    config = _level_cells(options)[0].config
    updates = config.total_steps // (config.num_envs * config.num_steps)
    return (f"CaveEscape 13x13, 512 training levels of 4 WFC structures (envs/level_sets), PPO (rl/ued/ppo.py, "
            f"preset `{budget['preset']}` with {budget['student'] or 'no changes'}, feed-forward core), "
            f"{config.total_steps} environment steps per run ({updates} student updates of {config.num_envs} envs x "
            f"{config.num_steps} steps), zero-shot evaluation at every {config.eval_every:,} steps on "
            f"{config.eval_limit or 'all'} levels of each set taken with the same number from every structure "
            "(test.npz: 28 of each of its 4 structures; held_out.npz: all 112, 8 of each of 14), "
            f"{1 if config.eval_greedy else config.eval_episodes} "
            f"{'greedy episode' if config.eval_greedy else 'stochastic episodes'} per level, every draw seeded; "
            "per-structure solved rates are the tasks cave_escape-test-<S> and cave_escape-held_out-<S>. "
            "The level VAE DRED reads is trained first (`level-vae` under the run root); "
            "its accuracies and how close each level source is to the training levels: levels.md.")


def _level_extra(options: BenchOptions, cells: list[Cell], records: list[dict[str, Any]]) -> str:
    out = LEVEL_GENERATION.out_dir(options)
    root = LEVEL_GENERATION.run_root(options)
    runs = {(c.method, c.seed): RunDir(root / c.run) for c in cells if is_done(LEVEL_GENERATION, options, c)}
    if runs:
        _solved_curves_figure(runs, out / "curves.png")
    dred = {seed: run for (method, seed), run in runs.items() if method == "dred"}
    vae = RunDir(root / "level-vae")
    if dred and len(dred) == sum(c.method == "dred" for c in cells) and vae.is_finished():
        final = vae.summary["final"]
        atomic_write_text(out / "levels.md", "# Levels of the level_generation benchmark\n\n" + (
            f"Level VAE ({vae.summary['step']} steps): cell accuracy train {final['train/cell_accuracy']:.3f}, "
            f"test {final.get('test/cell_accuracy', float('nan')):.3f}; decoded prior samples solvable "
            f"{final['prior_samples/solvable']:.2f}.\n\nHow close each level source is to the 512 training levels:"
            "\n\n" + level_closeness(dred)))
    if dred:
        _buffer_figure(dred, out / "buffer.png")
    parts = [figure_link(out / "curves.png", "solved rate during training", out),
             figure_link(out / "levels.png", "training levels beside DRED's generated levels", out),
             figure_link(out / "buffer.png", "DRED's buffer per update: generated levels admitted, their "
                         "solvable share, and the replay distribution's mass on training levels", out)]
    if (out / "levels.md").is_file():  # kept from the run that measured it when the runs are elsewhere
        parts.append((out / "levels.md").read_text().split("\n", 2)[2])
    return "\n".join(p for p in parts if p)


def _dred_claim(records: list[dict]) -> str:
    """DRED's claim: DRED >= PLR >= DR zero-shot, with a larger gap on held-out structures."""
    from grp_workbench.harness.evaluation import iqm_ci

    parts, orders, gaps, separated = [], [], {}, []
    for task in ("cave_escape-in_dist", "cave_escape-held_out_structures"):
        values = {m: [r["metrics"]["solved_rate"] for r in records if r["method"] == m and r["task"] == task]
                  for m in UED_METHODS}
        if any(not v for v in values.values()):
            return ("DRED >= PLR >= DR zero-shot, larger on held-out structures (paper): not every method has "
                    f"finished {task} yet.")
        stats = {m: iqm_ci(v) for m, v in values.items()}
        score = {m: stats[m][0] for m in UED_METHODS}
        orders.append(score["dred"] >= score["plr"] >= score["dr"])
        gaps[task] = score["dred"] - score["plr"]
        separated.append(stats["dred"][1] > max(stats[m][2] for m in UED_METHODS if m != "dred"))
        parts.append(f"{task.removeprefix('cave_escape-')}: " + ", ".join(f"{m.upper() if m != 'uniform' else m} "
                                                                          f"{score[m]:.3f}" for m in UED_METHODS))
    order = ("holds on both sets" if all(orders) else "holds on neither set" if not any(orders)
             else f"holds on {'in_dist' if orders[0] else 'held_out_structures'} only")
    larger = gaps["cave_escape-held_out_structures"] > gaps["cave_escape-in_dist"]
    return (f"DRED >= PLR >= DR zero-shot, with a larger gain on held-out structures (paper): the order {order} "
            f"(solved-rate IQM; {'; '.join(parts)}); DRED - PLR is {gaps['cave_escape-in_dist']:+.3f} in distribution "
            f"and {gaps['cave_escape-held_out_structures']:+.3f} on held-out structures "
            f"({'larger' if larger else 'not larger'} there); DRED's CI "
            f"{'clears' if all(separated) else 'overlaps'} every other method's "
            f"{'on both sets' if all(separated) or not any(separated) else 'on one set'}. Seeds and budget are far "
            "below the paper's.")


LEVEL_GENERATION = Suite(
    name="level_generation",
    title="DRED (data-regularised environment design) against DR, uniform and PLR: zero-shot CaveEscape",
    grid=_level_cells, record=_level_record, headline="solved_rate", notes=_level_notes,
    claims=(_dred_claim,), extra_markdown=_level_extra, prepare=_prepare_level_generation, tables=_level_tables,
    budgets=("cpu", "paper", "tiny"),
)


# ---- procgen_plr: PLR's level sampling on Procgen maze ------------------------------------------------
PROCGEN_PRESET = {"cpu": "quick", "paper": "paper"}


def _procgen_cells(options: BenchOptions) -> list[Cell]:
    from grp_workbench.rl.ued.procgen_ppo import SAMPLERS
    from grp_workbench.rl.ued.procgen_ppo import SPECS as PROCGEN_SPECS

    preset = PROCGEN_PRESET[options.budget]
    cells = []
    for seed in options.seeds or (0,):
        for sampler in SAMPLERS:
            spec = PROCGEN_SPECS[f"procgen-{sampler}"]
            config = build_config(spec.config_cls, spec.presets, preset, {"seed": str(seed), "env_name": "maze",
                                                                          "device": options.device})
            task = f"procgen-{config.env_name}"
            cells.append(Cell(sampler, f"{task}-train_levels", seed, spec, config, f"{sampler}/seed{seed}",
                              preset=preset, outputs=tuple((sampler, f"{task}-{split}_levels", seed)
                                                           for split in ("train", "test"))))
    return cells


def _procgen_record(cell: Cell, summary: dict[str, Any], run: RunDir) -> dict[tuple, dict[str, float]]:
    final = summary["final"]
    return {key: {"return": final[f"{split}/return"], "solved_rate": final[f"{split}/solved_rate"]}
            for key, split in zip(cell.outputs, ("train", "test"))}


def _procgen_notes(options: BenchOptions) -> str:
    config = _procgen_cells(options)[0].config
    return (f"Procgen {config.env_name} ({config.distribution_mode}) through workbench/Procgen-v0, PPO with the "
            f"IMPALA ResNet (rl/ued/procgen_ppo.py), preset '{PROCGEN_PRESET[options.budget]}': "
            f"{config.num_train_levels} training levels, {config.num_envs} envs x {config.num_steps} steps per "
            f"update, {config.total_steps} environment steps per run; evaluation: one episode on each of "
            f"{config.eval_levels} levels (training levels 0.., and unseen levels from {config.test_start_level}). "
            "At the cpu budget this shows PLR's level sampling, not its generalization gain (PLR: 25M steps, the "
            "paper budget). Procgen needs `make procgen` (Python <= 3.10 wheels).")


def _sampling_figure(runs: dict[tuple[str, int], RunDir], path: Path) -> None:
    """Left: episodes per training level (levels ordered by PLR's final score); right: PLR's replay
    distribution entropy during training against uniform's log N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _procgen_extra(options: BenchOptions, cells: list[Cell], records: list[dict[str, Any]]) -> str:
    out = PROCGEN_PLR.out_dir(options)
    runs = {(c.method, c.seed): RunDir(PROCGEN_PLR.run_root(options) / c.run)
            for c in cells if is_done(PROCGEN_PLR, options, c)}
    if runs:
        _sampling_figure(runs, out / "sampling.png")
    return figure_link(out / "sampling.png", "episodes per level and PLR's replay entropy", out)


def _plr_claim(records: list[dict]) -> str:
    plr, uniform = (cell_iqm(records, m, "procgen-maze-test_levels", "return") for m in ("plr", "uniform"))
    if plr is None or uniform is None:
        return "PLR > uniform level sampling in test return (paper, 25M steps): not measured yet."
    return (f"PLR > uniform level sampling in test return (paper, 25M steps): measured PLR {plr:.2f} vs uniform "
            f"{uniform:.2f} on unseen maze levels ({'same direction' if plr > uniform else 'opposite direction'}); "
            "at the cpu budget (32k steps, 1 seed) this is not a test of the claim.")


PROCGEN_PLR = Suite(
    name="procgen_plr",
    title="PLR (prioritized level replay) on Procgen maze: its replay distribution and transfer",
    grid=_procgen_cells, record=_procgen_record, headline="return", notes=_procgen_notes,
    claims=(_plr_claim,), extra_markdown=_procgen_extra,
)


# ---- offline_rl_speed: update speed of ours beside d3rlpy, side by side in one process ----------------
SPEED_TASK = "hopper-medium"
SPEED_UPDATES = {"cpu": 300, "paper": 2000}  # per contender and round; a GPU run uses the larger count
SPEED_BATCHED_SEEDS = 5
# d3rlpy 2.8 pins gymnasium 1.0, ours needs a newer one: install it without its pins
D3RLPY_INSTALL = ("pip install --no-deps d3rlpy==2.8.1 gym==0.26.2 gym-notices structlog dataclasses-json marshmallow "
                  "typing-inspect mypy-extensions colorama")
PROFILE_CATEGORIES = {  # torch operator -> what it is, for the profile table
    "aten::bmm": "matrix multiplies", "aten::baddbmm": "matrix multiplies", "aten::mm": "matrix multiplies",
    "aten::addmm": "matrix multiplies", "aten::clamp_min": "ReLU and its backward",
    "aten::threshold_backward": "ReLU and its backward", "aten::relu": "ReLU and its backward",
    "aten::sum": "sums (bias gradients, losses)", "aten::_fused_adam_": "Adam steps",
    "aten::_foreach_lerp_": "target updates", "aten::copy_": "copies (batch gathering, views)",
    "aten::index": "copies (batch gathering, views)",
}


def _speed_device(options: BenchOptions) -> str:
    import torch

    if options.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return options.device


def _speed_folder(options: BenchOptions) -> str:
    """offline_rl_speed_cpu, or offline_rl_speed_<GPU model> (h100, h200, a100, ...)."""
    import re

    import torch

    device = _speed_device(options)
    kind = "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        found = re.search(r"\b([A-Z]+\d+)\b", torch.cuda.get_device_name(torch.device(device)))
        kind = found.group(1).lower() if found else "cuda"
    return f"offline_rl_speed_{kind}"


def _speed_cells(options: BenchOptions) -> list[Cell]:
    contenders = ["td3bc", "a2pr", f"td3bc-{SPEED_BATCHED_SEEDS}seeds", "d3rlpy-td3bc"]
    params = {"task": SPEED_TASK, "updates": SPEED_UPDATES[options.budget], "batched_seeds": SPEED_BATCHED_SEEDS,
              "device": _speed_device(options), "contenders": contenders}
    return [Cell("td3bc", SPEED_TASK, 0, None, params, "speed", measure=_measure_speed,
                 outputs=tuple((name, SPEED_TASK, 0) for name in contenders))]


def _measure_speed(cell: Cell, folder: Path) -> dict[tuple, dict[str, float]]:
    """updates/s of ours (TD3+BC, A2PR; one seed, and several batched) and d3rlpy's TD3PlusBC,
    alternating, two rounds each after a warm-up, on the same data, device, batch size and threads."""
    import time

    import torch

    from grp_workbench.harness.device import make_policy
    from grp_workbench.rl.offline.datasets import load_dataset

    params = cell.config
    data = load_dataset(params["task"])
    policy = make_policy(params["device"], "fp32")

    def synchronize() -> None:  # CUDA kernels run asynchronously: time until they have finished
        if policy.device.type == "cuda":
            torch.cuda.synchronize(policy.device)

    def ours(spec, n_seeds: int, profiled: str = ""):
        config = build_config(spec.config_cls, spec.presets, "paper", {"dataset": params["task"],
                                                                        "n_seeds": str(n_seeds)})
        algorithm = spec.build(config, policy)
        if profiled:
            algorithms[profiled] = algorithm

        def run(n: int) -> float:
            synchronize()
            start = time.perf_counter()
            for _ in range(n):
                algorithm.update()
            synchronize()
            return n / (time.perf_counter() - start)

        return run

    algorithms: dict[str, Any] = {}
    contenders = {"td3bc": ours(TD3BC, 1, "td3bc"), "a2pr": ours(A2PR, 1, "a2pr"),
                  f"td3bc-{params['batched_seeds']}seeds": ours(TD3BC, params["batched_seeds"])}
    if "d3rlpy-td3bc" in params["contenders"]:
        try:
            import d3rlpy
        except ImportError as err:
            raise HarnessError(f"offline_rl_speed times d3rlpy beside ours, and d3rlpy is not installed ({err}). "
                               f"Install it beside ours: {D3RLPY_INSTALL}") from err
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
    for run in contenders.values():
        run(20)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(2):
        for name, run in contenders.items():
            rates[name].append(run(params["updates"]))
    import json

    # where one update's time goes, and how fast its matrix multiplies run: what bounds the speed
    profile = {name: _profile_updates(algorithm) for name, algorithm in algorithms.items()}
    (folder / "profile.json").write_text(json.dumps(profile, indent=1))
    return {(name, params["task"], 0): {"updates_per_s": float(np.mean(r))} for name, r in rates.items()}


def _profile_updates(algorithm, n: int = 20) -> dict[str, Any]:
    """Self CPU time per operator category over ``n`` updates, and the matrix multiplies' GFLOP/s."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(n):
            algorithm.update()
    shares: dict[str, float] = {}
    flops, matmul_seconds, total = 0.0, 0.0, 0.0
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        total += seconds
        category = PROFILE_CATEGORIES.get(event.key, "other")
        shares[category] = shares.get(category, 0.0) + seconds
        if category == "matrix multiplies":
            flops += event.flops
            matmul_seconds += seconds
    return {"seconds_per_update": total / n, "shares": {k: v / total for k, v in sorted(shares.items())},
            "matmul_gflop_per_update": flops / n / 1e9, "matmul_gflop_per_s": flops / max(matmul_seconds, 1e-9) / 1e9}


def _speed_notes(options: BenchOptions) -> str:
    params = _speed_cells(options)[0].config
    return (f"Update speed on the {params['task']} dataset, one process, the folder's device: "
            f"{params['updates']} updates per contender (budget `{options.budget}`), 2 interleaved rounds after a "
            "warm-up, batch 256, fp32, the process's torch threads; a speed claim is a ratio of two rows of one "
            f"run. d3rlpy: `{D3RLPY_INSTALL}`.")


def _rate(records: list[dict], method: str) -> float | None:
    values = [r["metrics"]["updates_per_s"] for r in records if r["method"] == method]
    return values[0] if values else None


def _speed_vs_d3rlpy(records: list[dict]) -> str:
    ours, theirs = _rate(records, "td3bc"), _rate(records, "d3rlpy-td3bc")
    if ours is None or theirs is None:
        return "TD3+BC ours / d3rlpy's TD3PlusBC: no d3rlpy row in this run."
    return (f"TD3+BC ours / d3rlpy's TD3PlusBC, updates/s: {ours:.0f} / {theirs:.0f} = {ours / theirs:.2f}x "
            f"({'faster' if ours > theirs else 'slower'}).")


def _speed_batched(records: list[dict]) -> str:
    one = _rate(records, "td3bc")
    batched = [r for r in records if r["method"].startswith("td3bc-") and r["method"].endswith("seeds")]
    if one is None or not batched:
        return "Batched seeds: not measured."
    n = batched[0]["method"].removeprefix("td3bc-").removesuffix("seeds")
    return (f"{n} batched TD3+BC seeds take {one / batched[0]['metrics']['updates_per_s']:.2f}x the time of one "
            f"({n}x would be no gain over separate runs); A2PR runs at "
            f"{(_rate(records, 'a2pr') or float('nan')) / one:.2f}x TD3+BC's update rate.")


def _speed_extra(options: BenchOptions, cells: list[Cell], records: list[dict[str, Any]]) -> str:
    """The profile of the run here (kept as profile.md beside the results for a report rewritten elsewhere)."""
    import json

    out = OFFLINE_RL_SPEED.out_dir(options)
    measured = OFFLINE_RL_SPEED.run_root(options) / cells[0].run / "profile.json"
    if measured.is_file() and is_done(OFFLINE_RL_SPEED, options, cells[0]):
        profile = json.loads(measured.read_text())
        categories = sorted({c for p in profile.values() for c in p["shares"]})
        on_gpu = str(cells[0].config["device"]).startswith("cuda")
        host = (" On a GPU this is the host's time issuing kernels that run asynchronously: the shares say where "
                "the CPU side spends an update, and matmul GFLOP/s is GFLOP per second of host time spent issuing "
                "matrix multiplies, not the GPU's arithmetic rate.") if on_gpu else ""
        lines = ["# Where an update's time goes", "",
                 "torch.profiler over 20 updates per method, one seed, self CPU time by operator category, on "
                 f"the machine of the results beside this file.{host}", "",
                 "| method | ms per update | " + " | ".join(categories)
                 + " | matmul GFLOP per update | matmul GFLOP/s |",
                 "| --- | --- | " + " | ".join("---" for _ in categories) + " | --- | --- |"]
        for name, p in profile.items():
            lines.append(f"| {name} | {1000 * p['seconds_per_update']:.1f} | "
                         + " | ".join(f"{100 * p['shares'].get(c, 0):.0f}%" for c in categories)
                         + f" | {p['matmul_gflop_per_update']:.2f} | {p['matmul_gflop_per_s']:.1f} |")
        atomic_write_text(out / "profile.md", "\n".join(lines) + "\n")
    if not (out / "profile.md").is_file():
        return ""
    return (out / "profile.md").read_text().replace("# Where", "## Where", 1)


OFFLINE_RL_SPEED = Suite(
    name="offline_rl_speed",
    title="Offline RL update speed: our TD3+BC and A2PR beside d3rlpy's TD3PlusBC (one process, one device)",
    grid=_speed_cells, record=None, headline="updates_per_s", notes=_speed_notes,
    claims=(_speed_vs_d3rlpy, _speed_batched), folder=_speed_folder, extra_markdown=_speed_extra,
)
