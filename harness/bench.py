"""Benchmarks as declared grids: one runner for every suite, on one process, several, or a Ray cluster.

A suite (``Suite``) declares its cells (method spec, config, task, seed, the run folder under the
suite's run root), how a finished run becomes a record, which metric is the headline and how the
paper lays out its table. ``run_suite`` does the rest, the same way for every suite:

* cells whose run is finished are skipped; unfinished ones resume from their checkpoint (each cell is
  a harness run, ``harness.trainer.train`` with ``resume-or-start``);
* ``results.json`` in the common format and the README are rewritten after every finished cell,
  labelled ``PARTIAL (k of n cells)`` until the grid is complete;
* executors: ``local`` (in this process), ``workers N`` (N processes here, each training the next cell
  no other holds, through the run folder's lock) and ``ray`` (each cell a Ray task with its CPU / GPU
  request, on a local Ray instance or the cluster at ``--address``; the run root must then be a path
  every node sees, such as a shared file system).

A cell is named by (suite, options, index) so that a worker process or a Ray task rebuilds it from
the suite's declaration instead of receiving pickled models and configs; the driver reads records
from the finished run folders.

Most cells train a method (a harness run). A *measured* cell is work that is not a training run (an
attack on one captured update, a timing of several implementations side by side): its ``measure``
function computes records in the cell's folder, the runner stores them in ``<cell>/record.json``
with the cell's parameters, and the cell counts as done while those parameters are unchanged. What
several cells need first (a prior, a classifier, captured updates) is the suite's ``prepare`` step,
run once by the driver before any cell starts, into the suite's run root.

Suites are registered under the entry-point group ``grp_workbench.bench`` (pyproject.toml), so
``workbench bench --list`` names them without importing any method.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from grp_workbench.harness.errors import HarnessError
from grp_workbench.harness.evaluation import summarize
from grp_workbench.harness.runs import (
    CONFIG_FILE,
    RunDir,
    atomic_write_json,
    claim,
    git_commit,
    hold_run,
    machine_info,
    now_iso,
    read_json,
)
from grp_workbench.harness.trainer import MethodSpec, config_changes, train_cell

EXECUTORS = ("local", "workers", "ray")


@dataclass(frozen=True)
class Cell:
    """One run of a grid: the record it makes is (method, task, seed)."""

    method: str  # the method's name in results (may differ from the spec's CLI name)
    task: str
    seed: int
    spec: MethodSpec | None  # None for a measured cell
    config: Any  # a TrainConfig, or the JSON-able parameters of a measured cell
    run: str  # run folder, relative to the suite's run root
    preset: str = "paper"
    cpus: float = 1.0  # what one cell asks of an executor (Ray's num_cpus / num_gpus)
    gpus: float = 0.0
    # seeds trained together in this one run (batched networks, ``n_seeds``): the suite's record
    # function then returns {seed: metrics} and the cell makes one record per member
    members: tuple[int, ...] = ()
    # a cell whose records differ in method or task (one run evaluated on several level sets, one
    # timing of several implementations): the (method, task, seed) of each; its record function
    # (or ``measure``) then returns {(method, task, seed): metrics}
    outputs: tuple[tuple[str, str, int], ...] = ()
    # a measured cell: (cell, its folder) -> metrics, or {key: metrics} as a record function returns
    measure: Callable[[Cell, Path], dict[Any, Any]] | None = None

    def keys(self) -> tuple[tuple[str, str, int], ...]:
        """The (method, task, seed) of every record this cell makes."""
        if self.outputs:
            return self.outputs
        return tuple((self.method, self.task, seed) for seed in self.members or (self.seed,))

    def per_key(self, measured: dict[Any, Any]) -> dict[tuple[str, str, int], dict[str, float]]:
        """A record function's (or ``measure``'s) result as {(method, task, seed): metrics}."""
        if self.outputs:
            return {key: measured[key] for key in self.outputs}
        if self.members:
            return {(self.method, self.task, seed): measured[seed] for seed in self.members}
        return {(self.method, self.task, self.seed): measured}


@dataclass(frozen=True)
class BenchOptions:
    """What a user chooses on the command line; a suite turns it into cells."""

    budget: str = "cpu"
    seeds: tuple[int, ...] | None = None  # None: the budget's own
    # most seeds trained together as one batched run (None: all of them). On a CPU a batched update
    # costs about as much per seed as separate runs, so 1 lets N workers train N seeds at once.
    seeds_per_run: int | None = None
    methods: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None
    runs: str = ""  # run root; empty: runs/bench/<suite>
    out: str = ""  # results folder; empty: benchmarks/<suite>
    device: str = "auto"


@dataclass(frozen=True)
class Suite:
    name: str
    title: str  # the paper (or question) the suite answers, for the combined report
    grid: Callable[[BenchOptions], list[Cell]]
    # finished run -> metrics, or {seed: metrics} for a cell with batched ``members``, or
    # {(method, task, seed): metrics} for a cell with ``outputs``; None when every cell is measured
    record: Callable[[Cell, dict[str, Any], RunDir], dict[Any, Any]] | None
    headline: str  # the metric of the paper-style table
    notes: Callable[[BenchOptions], str] = lambda options: ""
    budgets: tuple[str, ...] = ("cpu", "paper")
    # one sentence per claim of the paper: a fixed text, or a function of the records that says
    # whether the measured direction agrees (so a rerun restates it)
    claims: tuple[str | Callable[[list[dict[str, Any]]], str], ...] = ()
    # (options, cells, records) -> markdown below the tables: figures, aggregates
    extra_markdown: Callable[[BenchOptions, list[Cell], list[dict[str, Any]]], str] = lambda *args: ""
    record_device: bool = False  # add the run's device description to each record
    # records -> the paper-style table(s), when rows = methods x columns = tasks is not how the field
    # prints it (attack x defense, ...); the default is ``paper_table`` of the headline
    tables: Callable[[list[dict[str, Any]]], str] | None = None
    # (options, the cells about to run) -> None: what those cells need first, made once by the driver
    prepare: Callable[[BenchOptions, list[Cell]], None] | None = None
    # options -> the folder name under runs/bench and benchmarks (default: <suite>[_<budget>])
    folder: Callable[[BenchOptions], str] | None = None
    # records -> the same records with metrics that compare cells (an attacked run minus its clean
    # run); applied to every record, carried-over ones too, before tables, claims and results
    derive: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None

    def run_root(self, options: BenchOptions) -> Path:
        """runs/bench/<suite> for the cpu budget, runs/bench/<suite>_<budget> for another."""
        return Path(options.runs or f"runs/bench/{self._folder(options)}")

    def out_dir(self, options: BenchOptions) -> Path:
        return Path(options.out or f"benchmarks/{self._folder(options)}")

    def _folder(self, options: BenchOptions) -> str:
        if self.folder is not None:
            return self.folder(options)
        return self.name if options.budget == "cpu" else f"{self.name}_{options.budget}"

    def cells(self, options: BenchOptions) -> list[Cell]:
        """The grid, filtered by ``options.methods`` / ``options.tasks`` (unknown names are one error)."""
        if options.budget not in self.budgets:
            raise HarnessError(f"suite {self.name}: budget {options.budget!r} is not one of {', '.join(self.budgets)}.")
        cells = self.grid(options)
        for position, what, chosen in ((0, "method", options.methods), (1, "task", options.tasks)):
            known = sorted({key[position] for c in cells for key in c.keys()})
            unknown = sorted(set(chosen or ()) - set(known))
            if unknown:
                raise HarnessError(f"suite {self.name}: unknown {what}(s) {', '.join(unknown)}; choose from "
                                   f"{', '.join(known)}.")
        return [c for c in cells if (not options.methods or {k[0] for k in c.keys()} & set(options.methods))
                and (not options.tasks or {k[1] for k in c.keys()} & set(options.tasks))]


# ---- registry --------------------------------------------------------------------------------------
def suite_names() -> list[str]:
    return sorted(entry.name for entry in entry_points(group="grp_workbench.bench"))


def load_suite(ref: str) -> Suite:
    """A registered suite by name, or any ``module:attribute`` that holds a ``Suite``."""
    if ":" in ref:
        module, _, attribute = ref.partition(":")
        return getattr(importlib.import_module(module), attribute)
    found = {entry.name: entry for entry in entry_points(group="grp_workbench.bench")}
    if ref not in found:
        raise HarnessError(f"unknown benchmark suite {ref!r}; the suites are: {', '.join(sorted(found))}.")
    return found[ref].load()


# ---- one cell --------------------------------------------------------------------------------------
def cell_path(suite: Suite, options: BenchOptions, cell: Cell) -> Path:
    return suite.run_root(options) / cell.run


RECORD_FILE = "record.json"  # a measured cell's records, beside its parameters
ANALYSIS_FILE = "analysis.md"  # a suite's hand-written reading of its results, kept across rewrites


def _same_params(stored: Any, params: Any) -> bool:
    return stored == json.loads(json.dumps(params))


def is_done(suite: Suite, options: BenchOptions, cell: Cell) -> bool:
    """Finished with this cell's config (a finished run of other settings in its folder is not this
    cell: training it stops with the harness's one-line config error); a measured cell: its
    record.json holds the cell's parameters."""
    path = cell_path(suite, options, cell)
    if cell.measure is not None:
        record = path / RECORD_FILE
        return record.is_file() and _same_params(read_json(record).get("params"), cell.config)
    run = RunDir(path)
    return run.is_finished() and not config_changes(cell.spec, run, cell.config)


PINNED_DIR = "pinned"  # benchmarks/<suite>/pinned/<name>: slim copies of the runs a suite's cells share


def prerequisite_run(suite: Suite, options: BenchOptions, name: str, spec: MethodSpec, config: Any, run_dir: Path,
                     preset: str, keep: tuple[str, ...]) -> None:
    """What a suite's ``prepare`` trains once for many cells (a classifier, a pre-trained generator),
    pinned so that every session and machine measures against the same model.

    Training it again gives another model (floating point differs across CPUs and thread counts: the
    gan_unlearning DCGAN, same code and seed, drew 18.1% nines on one CPU and 15.6% on another, and
    a second run on the same CPU type differed too), so the first finished run is copied, slim (the
    algorithm-state entries ``keep``: the weights, and the optimizer states where the cells read
    them), into ``<results folder>/pinned/<name>``; commit it with the results. Later runs restore
    that copy instead of training, unless its config differs from ``config`` (then it is trained and
    pinned again); a pinned copy without an entry ``keep`` now names is one error."""
    import shutil

    from grp_workbench.harness.runs import SUMMARY_FILE, atomic_torch_save

    pinned, run = suite.out_dir(options) / PINNED_DIR / name, RunDir(run_dir)
    if RunDir(pinned).exists():
        # a copy pinned before the suite kept more of the state (gan_unlearning's optimizer states) cannot
        # be completed by training again: that gives another model, so the records measured against it go
        missing = set(keep) - RunDir(pinned).load_latest_checkpoint()[1]["algorithm"].keys()
        if missing:
            raise HarnessError(f"{pinned} has no {', '.join(map(repr, sorted(missing)))}, which the {name} of "
                               f"suite {suite.name} now needs, and training again gives another {name}: delete "
                               f"{pinned} and the records measured against it, then run again to train and pin "
                               "a new one.")
    usable = RunDir(pinned).exists() and not config_changes(spec, RunDir(pinned), config)
    if usable and not run.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(pinned, run_dir, dirs_exist_ok=True)
        print(f"{run_dir}: restored the pinned {name} ({pinned})")
    if not (run.is_finished() and not config_changes(spec, run, config)):
        train_cell(spec, config, str(run_dir), preset, quiet=False)
    if not usable:
        path, state = run.load_latest_checkpoint()
        missing = set(keep) - state["algorithm"].keys()
        if missing:
            raise HarnessError(f"cannot pin {name}: its checkpoint has no {', '.join(map(repr, sorted(missing)))} "
                               f"(it has {', '.join(state['algorithm'])}).")
        slim = {"step": state["step"], "algorithm": {k: v for k, v in state["algorithm"].items() if k in keep}}
        if pinned.exists():
            shutil.rmtree(pinned)
        atomic_torch_save(slim, pinned / "checkpoints" / path.name)
        for file in (CONFIG_FILE, SUMMARY_FILE):
            shutil.copy2(run.path / file, pinned / file)
        print(f"{run_dir}: pinned as {pinned} ({(pinned / 'checkpoints' / path.name).stat().st_size / 1e6:.1f} MB); "
              "commit it with the results")


def run_cell(suite: Suite, options: BenchOptions, cell: Cell, quiet: bool = True) -> dict[str, Any]:
    """Train (or resume, or skip) one cell; returns its run's summary (a measured cell: its
    record.json). A Ctrl-C stops the suite."""
    path = cell_path(suite, options, cell)
    if cell.measure is None:
        return train_cell(cell.spec, cell.config, str(path), cell.preset, quiet=quiet)
    with hold_run(path):  # one writer per cell, as for a training run
        if not is_done(suite, options, cell):
            path.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            measured = cell.per_key(cell.measure(cell, path))
            seconds = time.perf_counter() - start
            records = [{"method": method, "task": task, "seed": seed, "metrics": metrics}
                       for (method, task, seed), metrics in measured.items()]
            # written last and atomically: a cell killed while measuring has no record and is measured again
            atomic_write_json(path / RECORD_FILE, {"params": cell.config, "records": records, "date": now_iso(),
                                                   "git_commit": git_commit(),
                                                   "seconds": seconds, "machine": machine_info()})
        return read_json(path / RECORD_FILE)


def run_cell_by_index(suite_ref: str, options: BenchOptions, index: int) -> str:
    """What a Ray task runs: rebuild the grid, train cell ``index``."""
    suite = load_suite(suite_ref)
    cell = suite.cells(options)[index]
    run_cell(suite, options, cell, quiet=False)  # off a terminal: a progress line every 30 s, in the driver's log
    return cell.run


# ---- records and the README -----------------------------------------------------------------------
def cell_records(suite: Suite, options: BenchOptions, cell: Cell) -> list[dict[str, Any]]:
    """The records of a finished cell: one, or one per member of a batched-seed cell."""
    path = cell_path(suite, options, cell)
    if cell.measure is not None:
        return read_json(path / RECORD_FILE)["records"]
    run = RunDir(path)
    summary = run.summary
    records = []
    for (method, task, seed), metrics in cell.per_key(suite.record(cell, summary, run)).items():
        record = {"method": method, "task": task, "seed": seed, "metrics": metrics}
        if suite.record_device:
            record["device"] = summary.get("device", {})
        records.append(record)
    return records


def cell_values(records: list[dict[str, Any]], method: str, task: str, metric: str) -> list[float]:
    """``metric`` of every record (one per seed) of one (method, task) that has it."""
    return [r["metrics"][metric] for r in records
            if (r["method"], r["task"]) == (method, task) and metric in r["metrics"]]


def cell_iqm(records: list[dict[str, Any]], method: str, task: str, metric: str) -> float | None:
    """IQM over seeds of ``metric`` for one (method, task) of a suite's records; None if none has it
    (what a claim line compares)."""
    values = cell_values(records, method, task, metric)
    return summarize(values)["iqm"] if values else None


def rank_cells(records: list[dict[str, Any]], methods: Iterable[str], task: str, metric: str
               ) -> list[tuple[str, float, float, float]] | None:
    """(method, IQM, CI low, CI high) of each method on one task, best IQM first; None unless every
    method has records. A claim line calls the first *ahead* only where its CI clears every other's
    (``ranked_verdict``), so a rerun on other seeds does not flip a verdict drawn from overlapping CIs."""
    from grp_workbench.harness.evaluation import iqm_ci

    rows = []
    for method in methods:
        values = cell_values(records, method, task, metric)
        if not values:
            return None
        rows.append((method, *iqm_ci(values)))
    return sorted(rows, key=lambda row: row[1], reverse=True)


def ranked_verdict(ranking: list[tuple[str, float, float, float]], method: str) -> str:
    """Whether ``method`` leads a ``rank_cells`` ranking: "ahead" (its CI above every other's), "behind"
    (another method's CI above its own), else "tied" (the CIs overlap)."""
    mine = next(row for row in ranking if row[0] == method)
    others = [row for row in ranking if row[0] != method]
    if all(mine[2] > row[3] for row in others):
        return "ahead"
    if any(row[2] > mine[3] for row in others):
        return "behind"
    return "tied"


def cell_iqm_text(records: list[dict[str, Any]], method: str, task: str, metric: str, digits: int = 4) -> str:
    """``IQM [low, high]`` over seeds of ``metric`` for one (method, task), or "—" if no record has it
    (for a suite's own table layout)."""
    from grp_workbench.harness.evaluation import iqm_ci

    values = cell_values(records, method, task, metric)
    if not values:
        return "—"
    iqm, low, high = iqm_ci(values)
    return f"{iqm:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def paper_table(records: list[dict[str, Any]], metric: str, methods: list[str], tasks: list[str]) -> str:
    """Rows = methods, columns = tasks, cells = IQM [95% CI] (n) of ``metric`` over seeds."""
    from grp_workbench.harness.report import fmt

    head = "| method | " + " | ".join(tasks) + " |"
    rule = "| --- |" + " --- |" * len(tasks)
    rows = []
    for method in methods:
        cells = []
        for task in tasks:
            values = cell_values(records, method, task, metric)
            if not values:
                cells.append("")
                continue
            stats = summarize(values)
            low, high = stats["iqm_ci95"]
            cells.append(f"{fmt(stats['iqm'])} [{fmt(low)}, {fmt(high)}] (n={len(values)})")
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])


def suite_tables(suite: Suite, cells: list[Cell], records: list[dict[str, Any]]) -> str:
    """The suite's own table layout, or rows = methods x columns = tasks of the headline."""
    if suite.tables is not None:
        return suite.tables(records)
    methods = list(dict.fromkeys(key[0] for c in cells for key in c.keys()))
    tasks = list(dict.fromkeys(key[1] for c in cells for key in c.keys()))
    return paper_table(records, suite.headline, methods, tasks)


def figure_link(path: Path | None, alt: str, out_dir: Path) -> str:
    """Markdown for a figure of the suite's results folder: the one just drawn, or the one drawn by
    an earlier run when the runs to draw it are not on this machine; empty when there is none."""
    if path is None:
        return ""
    path = Path(path)
    if not path.is_file():
        return ""
    return f"![{alt}]({path.relative_to(out_dir) if path.is_relative_to(out_dir) else path.name})\n"


HISTORY_FILE = "eval_history.json"  # every finished cell's evaluation rows, so figures outlive the runs


def eval_histories(suite: Suite, options: BenchOptions, cells: Iterable[Cell],
                   columns: Callable[[str], bool]) -> dict[str, dict[str, Any]]:
    """The evaluation rows (``step`` and the columns ``columns`` keeps) of every cell, by run folder:
    read from the finished runs here and stored in the results folder's eval_history.json, merged
    with what that file already holds, so that a figure of learning curves can be redrawn on a
    machine that has only some of the runs (a fresh checkout, a run made elsewhere)."""
    path = suite.out_dir(options) / HISTORY_FILE
    stored = read_json(path) if path.is_file() else {}
    for cell in cells:
        if cell.measure is None and is_done(suite, options, cell):
            rows = RunDir(cell_path(suite, options, cell)).read_metrics("eval")
            stored[cell.run] = {"method": cell.method, "task": cell.task, "seeds": list(cell.members or (cell.seed,)),
                                "rows": [{"step": r["step"], **{k: v for k, v in r.items() if columns(k)}}
                                         for r in rows]}
    if stored:
        atomic_write_json(path, dict(sorted(stored.items())))
    return stored


def seed_runs(options: BenchOptions, default: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The seeds of a suite with batched members, split into the runs that train them: consecutive
    seeds (a batched run's members are seed, seed + 1, ...), at most ``options.seeds_per_run`` each."""
    seeds = tuple(options.seeds or default)
    size = options.seeds_per_run or len(seeds)
    runs = [seeds[i:i + size] for i in range(0, len(seeds), size)]
    for run in runs:
        if run != tuple(range(run[0], run[0] + len(run))):
            raise HarnessError(f"--seeds {','.join(map(str, seeds))}: seeds trained together must be consecutive "
                               f"(e.g. 0,1,2), or pass --seeds-per-run 1 to train each seed as its own run.")
    return runs


def write_suite_results(suite: Suite, options: BenchOptions, command: str) -> Path | None:
    """results.json and README.md from every finished cell of the whole grid (a run filtered to some
    methods or tasks never drops the records of the others), labelled partial or complete."""
    from grp_workbench.harness.report import write_results

    options = dataclasses.replace(options, methods=None, tasks=None)
    cells = suite.cells(options)
    done = [c for c in cells if is_done(suite, options, c)]
    # finished runs of the same seeds grouped otherwise (each seed alone, or all batched) count too: a
    # report written by an invocation of another --seeds-per-run must not miss records whose runs are here
    measured_keys, names = {key for c in done for key in c.keys()}, {c.run for c in cells}
    for grouping in (1, None):
        try:
            regrouped = suite.cells(dataclasses.replace(
                options, seeds=tuple(sorted(options.seeds)) if options.seeds else None, seeds_per_run=grouping))
        except HarnessError:  # seeds that cannot be batched together (0,2) have no batched run
            continue
        for cell in regrouped:
            if (cell.run not in names and not measured_keys & set(cell.keys())
                    and is_done(suite, options, cell)):
                done.append(cell)
                names.add(cell.run)
                measured_keys |= set(cell.keys())
    records = [record for c in done for record in cell_records(suite, options, c)]
    # Cells whose runs are not on this machine keep the records an earlier results.json holds for
    # them (made elsewhere, or before the runs were deleted): a rerun of some cells never drops others.
    previous = read_results(suite, options) or {"records": []}
    earlier = {(r["method"], r["task"], r["seed"]): r for r in previous["records"]}
    carried = []
    for cell in (c for c in cells if c not in done):
        if all(key in earlier for key in cell.keys()) and not measured_keys & set(cell.keys()):
            carried.append(cell)
            records += [earlier[key] for key in cell.keys()]
    # Records of this grid's (method, task)s for seeds this invocation did not ask for (--seeds 1 after a
    # run of seeds 0-2, or seeds trained one run each) are kept too: choosing seeds never drops others.
    present = {(r["method"], r["task"], r["seed"]) for r in records}
    pairs = {(c.method, c.task) for c in cells}
    other_seeds = [r for key, r in earlier.items() if key not in present and key[:2] in pairs]
    records += other_seeds
    if not records:
        return None
    if suite.derive is not None:
        records = suite.derive(records)
    # complete means the budget's own grid of (method, task, seed) is measured, however its seeds were
    # grouped into runs; a cell counts as finished when all its keys have records
    measured = present | {(r["method"], r["task"], r["seed"]) for r in other_seeds}
    budget_cells = suite.cells(dataclasses.replace(options, seeds=None, seeds_per_run=None))
    finished = sum(all(key in measured for key in cell.keys()) for cell in budget_cells)
    status = ("complete" if finished == len(budget_cells)
              else f"PARTIAL ({finished} of {len(budget_cells)} cells)")
    opening = [f"{suite.title}. Status: {status}.", "",
               f"Headline: `{suite.headline}`, IQM [95% CI] over seeds (n = seeds finished).", "",
               suite_tables(suite, cells, records), ""]
    if suite.claims:
        opening += ["Claims of the paper and the direction measured here:", ""]
        opening += [f"- {claim if isinstance(claim, str) else claim(records)}" for claim in suite.claims]
    notes = suite.notes(options)
    carried_keys = [key for cell in carried for key in cell.keys()] + [
        (r["method"], r["task"], r["seed"]) for r in other_seeds]
    origins = record_origins(suite, options, done, carried_keys, previous)
    if carried or other_seeds:
        where = "; ".join(origin_text(o) for o in origins if any(_holds(o, key) for key in carried_keys))
        what = " and ".join(part for part in (
            f"{len(carried)} of the {len(cells)} cells" if carried else "",
            f"{len(other_seeds)} records of seeds outside this run's --seeds" if other_seeds else "") if part)
        notes += (f" {what} are carried over from the previous results.json "
                  f"(measured at {where}); their runs are not under this run root.")
    if status != "complete":
        notes = f"{status}. {notes}"
    extra = suite.extra_markdown(options, cells + [c for c in done if c not in cells], records)
    analysis = suite.out_dir(options) / ANALYSIS_FILE
    if analysis.is_file():
        extra += (f"\n\n*Below: {ANALYSIS_FILE}, written by people about these records; the runner includes it and "
                  f"never rewrites it.*\n\n{analysis.read_text()}")
    return write_results(suite.out_dir(options), suite.name, command, records, notes=notes,
                         extra_markdown=extra, opening="\n".join(opening),
                         machine=previous.get("machine") if not done else measured_machine(suite, options, done),
                         extra_fields={"records_from": origins, "measured_here": bool(done)})


def measured_machine(suite: Suite, options: BenchOptions, done: list[Cell]) -> dict[str, Any] | None:
    """The machine that measured cells name in their record.json, when all name the same one: a report
    rewritten from runs copied off a lent GPU machine keeps that machine; None (this machine) otherwise,
    as for training runs, whose summaries name no machine."""
    machines = []
    for cell in done:
        if cell.measure is None:
            return None
        machines.append(read_json(cell_path(suite, options, cell) / RECORD_FILE).get("machine"))
    return machines[0] if machines[0] and all(m == machines[0] for m in machines) else None


def _holds(origin: dict[str, Any], key: tuple[str, str, int]) -> bool:
    return key[2] in origin.get("cells", {}).get(f"{key[0]}/{key[1]}", ())


def origin_text(origin: dict[str, Any]) -> str:
    if "one_of" in origin:
        return ("one of commits " + ", ".join(f"{o['git_commit']} ({o['date']})" for o in origin["one_of"])
                + " (a results.json of the old format did not record which measured which cell)")
    return f"commit {origin['git_commit']}, {origin['date']}"


def record_origins(suite: Suite, options: BenchOptions, done: list[Cell], carried_keys: list[tuple[str, str, int]],
                   previous: dict[str, Any]) -> list[dict[str, Any]]:
    """Where each record of a results.json was measured, as ``records_from``: entries of a commit, its
    latest date and the ``cells`` ("method/task" to seeds) measured at it. A finished run here was
    measured at the commit its run folder was created at; a carried record keeps the origin the
    previous results.json gives it, through any number of rewrites (a rewrite is not where a record
    came from).

    A results.json written before records_from named cells listed only commits, among them every
    rewrite that had runs on its machine; the records it carried are given one entry ``one_of``
    those commits (once each), so the list stops growing from there."""
    found: dict[Any, dict[str, set[int]]] = {}  # by commit (or candidate commits), with its latest date
    dates: dict[Any, str] = {}

    def add(origin: Any, key: tuple[str, str, int], date: str = "") -> None:
        found.setdefault(origin, {}).setdefault(f"{key[0]}/{key[1]}", set()).add(key[2])
        dates[origin] = max(dates.get(origin, ""), date)

    for cell in done:
        source = read_json(cell_path(suite, options, cell) / (RECORD_FILE if cell.measure is not None else CONFIG_FILE))
        for key in cell.keys():
            add(source.get("git_commit", "unknown"), key, source.get("created", source.get("date", "")))
    earlier = previous.get("records_from", [])
    unnamed = []
    for key in carried_keys:
        homes = [o for o in earlier if _holds(o, key)]
        for o in homes:
            if "one_of" in o:
                add(tuple((c["git_commit"], c["date"]) for c in o["one_of"]), key)
            else:
                add(o["git_commit"], key, o["date"])
        if not homes:
            unnamed.append(key)
    if unnamed:
        writes = [o for o in earlier if "cells" not in o]
        if previous.get("measured_here", "records_from" not in previous):  # that write measured records itself
            writes.append({"git_commit": previous.get("git_commit", "unknown"), "date": previous.get("date", "")})
        latest: dict[str, str] = {}
        for o in writes:
            latest[o["git_commit"]] = max(latest.get(o["git_commit"], ""), o["date"])
        candidates = tuple(sorted(latest.items(), key=lambda item: item[1])) or (("unknown", ""),)
        for key in unnamed:
            add(candidates if len(candidates) > 1 else candidates[0][0], key, candidates[-1][1])
    entries = []
    for origin, cells in found.items():
        named = {name: sorted(seeds) for name, seeds in sorted(cells.items())}
        if isinstance(origin, tuple):
            entries.append({"one_of": [{"git_commit": c, "date": d} for c, d in origin], "cells": named})
        else:
            entries.append({"git_commit": origin, "date": dates[origin], "cells": named})
    return sorted(entries, key=lambda e: e["one_of"][-1]["date"] if "one_of" in e else e["date"])


# ---- executors -------------------------------------------------------------------------------------
@dataclass
class Plan:
    cells: list[Cell]
    done: list[Cell] = field(default_factory=list)
    todo: list[int] = field(default_factory=list)  # indices into cells


def plan(suite: Suite, options: BenchOptions) -> Plan:
    cells = suite.cells(options)
    result = Plan(cells)
    for index, cell in enumerate(cells):
        (result.done.append(cell) if is_done(suite, options, cell) else result.todo.append(index))
    return result


def estimated_seconds(suite: Suite, options: BenchOptions, cell: Cell, done: list[Cell] = ()) -> float | None:
    """From a run of the same cell that measured its speed (an unfinished one); a measured cell: the
    median time of the finished cells of its method (``done``); else None."""
    path = cell_path(suite, options, cell)
    if cell.measure is not None:
        times = [read_json(cell_path(suite, options, c) / RECORD_FILE).get("seconds") for c in done
                 if c.measure is not None and c.method == cell.method]
        times = sorted(t for t in times if t is not None)
        return times[len(times) // 2] if times else None
    run = RunDir(path)
    rows = [r for r in run.read_metrics("train") if "steps_per_s" in r] if run.exists() else []
    if not rows:
        return None
    return max(cell.config.total_steps - rows[-1]["step"], 0) / max(rows[-1]["steps_per_s"], 1e-9)


def run_suite(suite_ref: str, options: BenchOptions, executor: str = "local", workers: int = 2,
              address: str | None = None, command: str = "", quiet: bool = True) -> Plan:
    """Train every unfinished cell of the suite ``suite_ref`` (a name or ``module:attribute``) and
    write its results; returns the plan after the run (what is done, what is left)."""
    if executor not in EXECUTORS:
        raise HarnessError(f"executor {executor!r} is not one of {', '.join(EXECUTORS)}.")
    suite = load_suite(suite_ref)
    todo = plan(suite, options)
    command = command or f"workbench bench {suite.name}"
    if todo.todo and suite.prepare is not None:
        suite.prepare(options, [todo.cells[i] for i in todo.todo])
    if executor == "local":
        for index in todo.todo:
            run_cell(suite, options, todo.cells[index], quiet=quiet)
            write_suite_results(suite, options, command)
    elif executor == "workers":
        _run_workers(suite_ref, suite, options, todo, workers, command)
    else:
        _run_ray(suite_ref, suite, options, todo, address, command)
    write_suite_results(suite, options, command)
    return plan(suite, options)


def _encode(options: BenchOptions) -> str:
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in vars(options).items()})


def _decode(encoded: str) -> BenchOptions:
    return BenchOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(encoded).items()})


def worker_threads(workers: int, environ: Mapping[str, str]) -> int:
    """Threads per worker: the caller's OMP_NUM_THREADS when set (one invocation is told how many
    cores it may use, e.g. beside another benchmark), else the machine's cores shared out. N workers
    each using every core oversubscribe them: on 2 cores, two A2PR runs at 2 threads each made 5-6
    steps/s each. Whether one run at 2 threads beats two at 1 thread depends on the host: one 2-core
    machine gave 29 steps/s against 2 x 12.7, another 20.2 against 2 x 13.5."""
    if environ.get("OMP_NUM_THREADS"):
        try:
            requested = int(environ["OMP_NUM_THREADS"])
        except ValueError:
            raise HarnessError(f"OMP_NUM_THREADS={environ['OMP_NUM_THREADS']!r}: a whole number of threads "
                               "per worker, e.g. OMP_NUM_THREADS=1.") from None
        if requested >= 1:
            return requested
    return max(1, (os.cpu_count() or 1) // workers)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop_workers(processes: list[subprocess.Popen], grace_s: float = 120.0) -> None:
    """Ask the workers still running to stop after their current step (SIGTERM: each saves its
    checkpoint; unlike a second SIGINT it never aborts one that a Ctrl-C already reached), then wait
    for them; one that does not stop within ``grace_s`` is killed."""
    running = [p for p in processes if p.poll() is None]
    for p in running:
        p.send_signal(signal.SIGTERM)
    for p in running:
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _run_workers(suite_ref: str, suite: Suite, options: BenchOptions, todo: Plan, workers: int, command: str) -> None:
    """N processes of this machine share the grid: each takes the next cell nobody holds (the run
    folder's lock); this process rewrites the results as cells finish."""
    if workers < 1:
        raise HarnessError(f"--workers {workers}: at least 1.")
    script = "import sys; from grp_workbench.harness.bench import worker_loop; worker_loop(sys.argv[1], sys.argv[2])"
    threads = str(worker_threads(workers, os.environ))
    environment = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    processes = [subprocess.Popen([sys.executable, "-c", script, suite_ref, _encode(options)], env=environment)
                 for _ in range(workers)]
    finished = len(todo.done)
    # a `kill` of this process alone (not its group, as Ctrl-C is) must not leave workers training
    # unwatched: they are asked to stop after their step, which saves each one's checkpoint
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while any(p.poll() is None for p in processes):
            time.sleep(2.0)
            now = sum(is_done(suite, options, c) for c in todo.cells)
            if now != finished:
                finished = now
                try:
                    write_suite_results(suite, options, command)
                except Exception as error:  # an interim report is worth less than the training still running
                    print(f"warning: rewriting {suite.name}'s results after a cell finished failed ({error!r}); "
                          "the workers go on, and the results are written again when they end.", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        _stop_workers(processes)
    failed = sum(1 for p in processes if p.returncode)
    if failed:
        raise HarnessError(f"{failed} of {workers} worker(s) failed; see their output above. Finished cells are "
                           "kept: run the same command again to continue.")


def worker_loop(suite_ref: str, encoded_options: str) -> None:
    """One worker process: train every unfinished cell no other process holds."""
    options = _decode(encoded_options)
    if os.environ.get("OMP_NUM_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    suite = load_suite(suite_ref)
    for cell in suite.cells(options):
        path = cell_path(suite, options, cell)
        with claim(path) as mine:
            if mine and not is_done(suite, options, cell):
                run_cell(suite, options, cell, quiet=False)


def _run_ray(suite_ref: str, suite: Suite, options: BenchOptions, todo: Plan, address: str | None,
             command: str) -> None:
    """Each unfinished cell a Ray task with its resource request; this driver writes the results as
    tasks finish. A task killed mid-run is retried by Ray and resumes its cell from the checkpoint."""
    try:
        import ray
    except ImportError as err:
        raise HarnessError("the ray executor needs Ray (installed with flwr[simulation]): pip install ray.") from err
    if not todo.todo:
        return
    # Tasks may run in another folder or on another node: give them absolute paths (on a cluster the
    # run root must be a path every node sees) and this checkout on their import path.
    options = dataclasses.replace(options, runs=str(suite.run_root(options).resolve()))
    if not ray.is_initialized():
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(),
                                                                               os.environ.get("PYTHONPATH")]))}}
        kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": os.cpu_count() or 1}
        ray.init(include_dashboard=False, runtime_env=runtime_env, **kwargs)
    remote = ray.remote(max_retries=2)(run_cell_by_index)
    pending = {remote.options(num_cpus=todo.cells[i].cpus, num_gpus=todo.cells[i].gpus)
               .remote(suite_ref, options, i): i for i in todo.todo}
    while pending:
        finished, _ = ray.wait(list(pending), num_returns=1)
        for ref in finished:
            ray.get(ref)  # a cell's error surfaces here
            pending.pop(ref)
        write_suite_results(suite, options, command)


def read_results(suite: Suite, options: BenchOptions) -> dict[str, Any] | None:
    path = suite.out_dir(options) / "results.json"
    return read_json(path) if path.is_file() else None


def write_combined_report(options: BenchOptions, out: str | os.PathLike = "reports/all") -> Path:
    """One page over every registered suite, from its results.json: the paper it tests, its status,
    the headline table, the claim lines, and a link to its README."""
    from grp_workbench.harness.report import atomic_write_text

    out = Path(out)
    lines = ["# All benchmarks", "", f"Budget `{options.budget}`; one section per suite, from its results.json "
             "(`workbench bench all` reruns or continues them; `--report-only` only rewrites this page).", ""]
    for name in suite_names():
        suite = load_suite(name)
        suite_options = dataclasses.replace(options, runs="", out="")
        results, cells = read_results(suite, suite_options), suite.cells(suite_options)
        readme = Path(os.path.relpath(suite.out_dir(suite_options) / "README.md", out))
        lines += [f"## {suite.title}", ""]
        if results is None:
            lines += [f"No results yet: `workbench bench {name}`.", ""]
            continue
        records = results["records"]
        expected = sum(len(c.keys()) for c in cells)
        status = "complete" if len(records) >= expected else f"partial ({len(records)} of {expected} records)"
        lines += [f"Suite `{name}`, {status}, commit `{results['git_commit']}`, {results['date']}; "
                  f"[full results]({readme}).", "", f"Headline `{suite.headline}`:", "",
                  suite_tables(suite, cells, records), ""]
        lines += [f"- {claim if isinstance(claim, str) else claim(records)}" for claim in suite.claims]
        lines += [""] if suite.claims else []
    path = out / "index.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
