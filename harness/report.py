"""Runs → a markdown report with tables and figures; benchmark results in the common format.

``write_report(run_dirs, out_dir)`` groups finished runs by (method, task), turns each seed's
summary into a score, and writes ``report.md`` with IQM ± 95% CI tables, learning curves with
bootstrap bands, and bar charts with CI whiskers. ``write_results`` writes a benchmark suite's
``results.json`` (command, git commit, machine, date, one record per method × task × seed, and a
summary computed by ``harness.evaluation``) and renders its ``README.md``.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from grp_workbench.harness.data import REPO_ROOT  # noqa: E402
from grp_workbench.harness.errors import HarnessError, HarnessWarning  # noqa: E402
from grp_workbench.harness.evaluation import mean_and_ci_over_seeds, summarize  # noqa: E402
from grp_workbench.harness.runs import (  # noqa: E402,E501
    RunDir,
    atomic_write_json,
    atomic_write_text,
    find_runs,
    git_commit,
    machine_info,
    now_iso,
)


@dataclass
class RunRecord:
    method: str
    task: str
    seed: int
    summary: dict[str, Any]
    run: RunDir


# Config keys that never change what a run measures; every other difference splits a group.
NOT_POOLING_KEYS = {"seed", "device", "deterministic", "log_every", "checkpoint_every", "keep_checkpoints"}


def collect_runs(roots: list[str | os.PathLike]) -> tuple[list[RunRecord], list[str]]:
    """Finished runs below ``roots``, one group per (method, task, preset and the config keys whose
    values differ), and a note for each run left out (unfinished, no summary, a seed already counted).

    Runs of one method and task made with different presets or settings are never pooled into one
    statistic: each such group is labelled ``method [preset=quick, total_steps=1500]``."""
    found, skipped = [], []
    for run in find_runs(roots):
        summary = run.summary
        if not summary or summary.get("status") != "finished":
            skipped.append(f"{run.path}: {run.status()}")
            continue
        found.append((run, run.header, summary))
    by_method_task: dict[tuple[str, str], list] = defaultdict(list)
    for run, header, summary in found:
        by_method_task[(header["method"], header["task"])].append((run, header, summary))
    records = []
    for (method, task), runs in sorted(by_method_task.items()):
        settings = [{"preset": h.get("preset"), **{k: v for k, v in h.get("config", {}).items()
                                                   if k not in NOT_POOLING_KEYS}} for _, h, _ in runs]
        differing = sorted({k for s in settings for k in s if len({repr(o.get(k)) for o in settings}) > 1},
                           key=lambda k: (k != "preset", k))
        seen: set[tuple[str, int]] = set()
        for (run, _, summary), setting in sorted(zip(runs, settings), key=lambda pair: str(pair[0][0].path)):
            label = method
            if differing:
                label += " [" + ", ".join(f"{k}={setting.get(k)}" for k in differing) + "]"
            if (label, summary["seed"]) in seen:
                note = f"{run.path}: seed {summary['seed']} of {label} on {task} is already counted (duplicate seed)"
                warnings.warn(note, HarnessWarning, stacklevel=2)
                skipped.append(note)
                continue
            seen.add((label, summary["seed"]))
            records.append(RunRecord(label, task, summary["seed"], summary, run))
    return records, skipped


def fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def _fmt_ci(stats: dict[str, Any], name: str = "iqm") -> str:
    low, high = stats[f"{name}_ci95"]
    return f"{fmt(stats[name])} [{fmt(low)}, {fmt(high)}]"


def score_table(records: list[RunRecord], metric: str, which: str = "final") -> list[dict[str, Any]]:
    """One row per (method, task): n seeds, IQM with CI, mean with CI, taken from ``summary[which]``."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for rec in records:
        if metric in rec.summary.get(which, {}):
            groups[(rec.method, rec.task)].append(rec.summary[which][metric])
    return [
        {"method": method, "task": task, "metric": metric, **summarize(values)}
        for (method, task), values in sorted(groups.items())
    ]


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for title, _ in columns) + " |"
    rule = "| " + " | ".join("---" for _ in columns) + " |"
    body = []
    for row in rows:
        cells = []
        for _, key in columns:
            value = row[key] if key in row else ""
            cells.append(fmt(value) if isinstance(value, float) else str(value))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


def _curves(records: list[RunRecord], metric: str) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(method, task) → (steps, seeds × steps) of the eval metric, on the steps all seeds share."""
    by_group: dict[tuple[str, str], list[dict[int, float]]] = defaultdict(list)
    for rec in records:
        points = {row["step"]: row[metric] for row in rec.run.read_metrics("eval") if metric in row}
        if points:
            by_group[(rec.method, rec.task)].append(points)
    out = {}
    for key, seeds in by_group.items():
        steps = sorted(set.intersection(*(set(s) for s in seeds)))
        if steps:
            out[key] = (np.array(steps), np.array([[s[t] for t in steps] for s in seeds]))
    return out


def plot_learning_curves(records: list[RunRecord], metric: str, path: Path) -> Path | None:
    curves = _curves(records, metric)
    if not curves:
        return None
    tasks = sorted({task for _, task in curves})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (method, t), (steps, values) in sorted(curves.items()):
            if t != task:
                continue
            mean, low, high = mean_and_ci_over_seeds(values)
            ax.plot(steps, mean, label=f"{method} (n={values.shape[0]})")
            ax.fill_between(steps, low, high, alpha=0.25)
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_bars(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """IQM per task (groups) and method (bars) with 95% CI whiskers."""
    if not rows:
        return None
    tasks = sorted({r["task"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(tasks) * len(methods)), 3.4))
    for i, method in enumerate(methods):
        labelled = False  # the legend names every method, also one without a bar in the first task
        for j, task in enumerate(tasks):
            row = next((r for r in rows if r["method"] == method and r["task"] == task), None)
            if row is None:
                continue
            low, high = row["iqm_ci95"]
            ax.bar(j + i * width, row["iqm"], width, yerr=[[row["iqm"] - low], [high - row["iqm"]]], capsize=4,
                   color=f"C{i}", label=None if labelled else method)
            labelled = True
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(tasks))], tasks)
    ax.set_ylabel(f"{rows[0]['metric']} (IQM, 95% CI)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_image_grid(rows: dict[str, list[np.ndarray]], path: str | os.PathLike, columns: int | None = None,
                    titles: dict[str, list[str]] | None = None, **imshow: Any) -> Path:
    """One labelled row of images per key (``imshow`` options such as ``cmap``, ``vmin``, ``vmax``);
    empty cells where a row is shorter than ``columns``."""
    columns = columns or max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.3 * columns + 1.5, 1.4 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c], interpolation="nearest", **imshow)
                if titles and label in titles:
                    ax.set_title(titles[label][c], fontsize=6)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return _save_figure(fig, Path(path))


def _slug(metric: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in metric)


def _save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(roots: list[str | os.PathLike], out_dir: str | os.PathLike, metrics: list[str] | None = None,
                 title: str = "workbench report") -> Path:
    """Write ``out_dir/report.md`` (+ ``figures/``) for every finished run below ``roots``.

    ``metrics``: evaluation metrics to tabulate (default: each run's main metric); a metric's tables
    hold the runs that report it.
    """
    records, skipped = collect_runs(roots)
    if not records:
        detail = "; ".join(skipped) if skipped else "no run directories were found"
        raise HarnessError(f"no finished runs under {', '.join(map(str, roots))} ({detail}).")
    out_dir = Path(out_dir)
    lines = [f"# {title}", "", f"Generated {now_iso()} from {len(records)} finished run(s); "
             f"code at commit `{git_commit()}`.", ""]
    metrics = metrics or sorted({r.summary["main_metric"] for r in records})
    columns = [("method", "method"), ("task", "task"), ("seeds", "n"), ("IQM", "iqm_text"), ("IQM 95% CI", "ci_text"),
               ("mean", "mean"), ("std", "std")]
    for name in metrics:
        for which in ("final", "best"):
            rows = score_table(records, name, which)
            if not rows:
                continue
            for row in rows:
                row["iqm_text"] = fmt(row["iqm"])
                row["ci_text"] = "[{}, {}]".format(*map(fmt, row["iqm_ci95"]))
            label = "last evaluation" if which == "final" else "best evaluation during training"
            lines += [f"## {name}: {label}", "", markdown_table(rows, columns), ""]
            if which == "final":
                bars = plot_bars(rows, out_dir / "figures" / f"{_slug(name)}_bars.png")
                if bars:
                    lines += [f"![{name} IQM with 95% CI]({bars.relative_to(out_dir)})", ""]
        curve = plot_learning_curves(records, name, out_dir / "figures" / f"{_slug(name)}_curves.png")
        if curve:
            lines += [f"![{name} learning curves]({curve.relative_to(out_dir)})",
                      "", "Curves: mean over seeds, band = bootstrap 95% CI.", ""]
        drawn = _curves(records, name)
        undrawn = sorted({(r.method, r.task) for r in records if name in r.summary.get("final", {})} - set(drawn))
        if undrawn:
            lines += ["No learning curve for " + "; ".join(f"{m} on {t}" for m, t in undrawn) + f": its runs share "
                      f"no evaluation step with {name} (different eval_every or lengths), so no mean can be drawn.",
                      ""]
    lines += ["## Throughput", "", markdown_table(
        [{"method": r.method, "task": r.task, "seed": r.seed, **r.summary["throughput"],
          "device": r.summary.get("device", {}).get("device", "?")} for r in records],
        [("method", "method"), ("task", "task"), ("seed", "seed"), ("steps/s", "steps_per_s"),
         ("wall s", "wall_seconds"), ("device", "device")]), ""]
    lines += ["## Runs", "", "Each statistic pools the seeds of one group: a method on a task with one preset and "
              "one config (groups that differ are labelled by the settings that differ).", ""]
    lines += [f"- `{r.run.path}` ({r.method}, {r.task}, seed {r.seed})" for r in records]
    if skipped:
        lines += ["", "Left out (not finished):"] + [f"- {s}" for s in skipped]
    lines += ["", "IQM = interquartile mean over seeds; CI = stratified bootstrap 95% percentile interval "
              "(rliable's definitions, harness/evaluation.py)."]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def portable(text: str) -> str:
    """``text`` with this checkout's absolute folder (and the working directory) removed, so that a
    committed command or note reruns as written on any machine's checkout."""
    for root in sorted({str(Path.cwd().resolve()), str(REPO_ROOT)}, key=len, reverse=True):
        text = text.replace(root + os.sep, "").replace(root, ".")
    return text


def write_results(out_dir: str | os.PathLike, suite: str, command: str, records: list[dict[str, Any]],
                  notes: str = "", reps: int = 2000, extra_markdown: str = "", opening: str = "",
                  machine: dict[str, Any] | None = None, extra_fields: dict[str, Any] | None = None) -> Path:
    """Benchmark results in the common format (../shared/DESIGN.md), plus a README rendered from them.

    ``records``: ``{"method", "task", "seed", "metrics": {name: value}}`` rows, one per cell.
    ``opening``: what the README shows first, under its title (the paper-style table and claims).
    ``machine``: where the records were measured, when not on this machine (a report rewritten from
    records measured elsewhere). ``extra_fields``: more top-level keys of results.json (provenance).
    """
    if not records:
        raise HarnessError(f"benchmark {suite!r} has no records to write; did every cell fail?")
    command, notes = portable(command), portable(notes)
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for rec in records:
        for metric, value in rec["metrics"].items():
            groups[(rec["method"], rec["task"], metric)].append(value)
    summary = []
    for (method, task, metric), values in sorted(groups.items()):
        stats = summarize(values, reps=reps)
        summary.append({"method": method, "task": task, "metric": metric, "n": stats["n"], "iqm": stats["iqm"],
                        "ci95": stats["iqm_ci95"], "mean": stats["mean"], "std": stats["std"]})
    out_dir = Path(out_dir)
    results = {"suite": suite, "command": command, "git_commit": git_commit(ignore=out_dir), "date": now_iso(),
               "machine": machine or machine_info(), "notes": notes, "records": records, "summary": summary,
               **(extra_fields or {})}
    atomic_write_json(out_dir / "results.json", results)
    table_rows = [{**row, "ci_text": "[{}, {}]".format(*map(fmt, row["ci95"]))} for row in summary]
    # the paper-style table and claims first, then how it was run, figures and analyses, and the full
    # long table last
    readme = [
        f"# Benchmark: {suite}", "", *([opening, ""] if opening else []), notes, "",
        f"- command: `{command}`", f"- commit: `{results['git_commit']}`", f"- date: {results['date']}",
        f"- machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"GPU {results['machine']['gpu']}, torch {results['machine']['torch']}", "",
        *([extra_markdown.strip(), ""] if extra_markdown.strip() else []),
        "## Every metric", "",
        markdown_table(table_rows, [("method", "method"), ("task", "task"), ("metric", "metric"), ("n", "n"),
                                    ("IQM", "iqm"), ("95% CI", "ci_text"), ("mean", "mean"), ("std", "std")]),
        "", "IQM and stratified-bootstrap 95% CIs over seeds (harness/evaluation.py). Raw rows: results.json.", "",
    ]
    atomic_write_text(out_dir / "README.md", "\n".join(readme))
    return out_dir / "results.json"
