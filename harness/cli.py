"""``workbench``: one command line for every domain.

Top-level verbs (``runs``, ``report``, ``info``) live here; each domain package mounts its own group
(``workbench federated ...``, ``rl``, ``recsys``) through the ``grp_workbench.cli`` entry point group
in pyproject.toml, so this file never imports a method. Domains load only when one of their
commands runs: ``workbench --help`` shows each domain with the first line of its ``cli`` module's
docstring, read without importing it (a method's modules import torch, seconds of start-up).
``train_command(spec)`` turns a method's ``MethodSpec`` into a ``train`` command with the options
every method shares.
"""

import ast
import importlib.util
import sys
import warnings
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from grp_workbench.harness.errors import HarnessWarning, WorkbenchError

if TYPE_CHECKING:
    from grp_workbench.harness.trainer import MethodSpec


@cache
def _domains() -> dict[str, EntryPoint]:
    return {entry.name: entry for entry in entry_points(group="grp_workbench.cli")}


def _summary_line(entry: EntryPoint) -> str:
    """The first docstring line of the module an entry point names, read from its source."""
    try:
        spec = importlib.util.find_spec(entry.module)
        tree = ast.parse(Path(spec.origin).read_text())
        return (ast.get_docstring(tree) or "").strip().splitlines()[0]
    except Exception:  # a missing or broken domain says so when it is used
        return ""


class _LazyDomain(click.Group):
    """A domain's command group, imported on first use (listing its commands, its help, running one)."""

    def __init__(self, name: str, entry: EntryPoint):
        super().__init__(name=name, help=_summary_line(entry), no_args_is_help=True)
        self._entry, self._group = entry, None

    def _real(self) -> click.Group:
        if self._group is None:
            try:
                self._group = typer.main.get_command(self._entry.load())
            except WorkbenchError:
                raise
            except Exception as err:  # a broken optional domain must not take the other domains down
                raise click.ClickException(f"domain {self.name!r} is unavailable ({type(err).__name__}: {err})") \
                    from err
        return self._group

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._real().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        return self._real().get_command(ctx, name)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._real().format_help(ctx, formatter)


class _Workbench(TyperGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *sorted(_domains())]

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        found = super().get_command(ctx, name)
        if found is None and name in _domains():
            return _LazyDomain(name, _domains()[name])
        return found


app = typer.Typer(
    cls=_Workbench,
    name="workbench",
    help="Run, compare and extend methods for generalization, robustness and privacy in RL, federated "
    "learning and recommender systems. Domains: rl, federated, recsys (as installed). "
    "Verbs: train, eval, attack, data, bench (per domain); runs, report, info (here).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

RUNS_ROOT = Path("runs")

OverridesOption = Annotated[list[str], typer.Option("--set", help="config override key=value, repeatable")]
RunDirOption = Annotated[
    Optional[Path], typer.Option(help="run directory; default runs/<method>/<task>/<preset>-seed<seed>")
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="continue the run in --run-dir from its last checkpoint (it must exist; "
                       "a finished run is kept). Checkpoints are pickles: resume only runs you trust")
]
ResumeOrStartOption = Annotated[
    bool, typer.Option("--resume-or-start", help="continue the run in --run-dir if it exists, else start it "
                       "(for scripts that rerun one command until it finishes)")
]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="delete an existing run in --run-dir first")]
DeterministicOption = Annotated[
    Optional[bool], typer.Option("--deterministic", help="forbid nondeterministic kernels")
]


def train_command(spec: "MethodSpec"):
    """A typer command that trains ``spec`` through the harness with the shared options."""
    from grp_workbench.harness.config import build_config, parse_overrides
    from grp_workbench.harness.trainer import train

    def command(
        preset: Annotated[str, typer.Option(help="one of: " + ", ".join(
            f"{name} ({spec.preset_costs[name]})" if name in spec.preset_costs else name for name in spec.presets))
        ] = "quick",
        seed: Annotated[Optional[int], typer.Option(help="random seed (config field seed)")] = None,
        overrides: OverridesOption = [],  # noqa: B006
        run_dir: RunDirOption = None,
        resume: ResumeOption = False,
        resume_or_start: ResumeOrStartOption = False,
        overwrite: OverwriteOption = False,
        device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda[:N] | mps")] = None,
        precision: Annotated[Optional[str], typer.Option(help="auto | fp32 | bf16 | fp16")] = None,
        deterministic: DeterministicOption = None,
        dataset: Annotated[Optional[str], typer.Option(help="dataset name or path (config field dataset)")] = None,
        data_dir: Annotated[Optional[Path], typer.Option(help="dataset folder (config field data_dir)")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
    ) -> None:
        if sum((resume, resume_or_start, overwrite)) > 1:
            raise typer.BadParameter("--resume, --resume-or-start and --overwrite exclude each other; pick one.")
        values = parse_overrides(overrides)
        for key, value in (("seed", seed), ("device", device), ("precision", precision),
                           ("deterministic", deterministic), ("dataset", dataset), ("data_dir", data_dir)):
            if value is not None:
                values[key] = str(value)
        config = build_config(spec.config_cls, spec.presets, preset, values)
        variant = f"{spec.variant(config)}-" if spec.variant else ""
        target = run_dir or RUNS_ROOT / spec.name / spec.task(config) / f"{variant}{preset}-seed{config.seed}"
        mode = ("resume" if resume else "resume-or-start" if resume_or_start else "overwrite" if overwrite
                else "error")
        summary = train(spec, config, str(target), preset, if_exists=mode, quiet=quiet)
        metric = summary["main_metric"]
        best = (f"best {summary['best'][metric]:.4f} at step {summary['best']['step']}" if metric in summary["best"]
                else "no best kept: the main metric is a test metric")
        stopped = f", stopped early at step {summary['stopped_early']}" if summary.get("stopped_early") else ""
        scores = (f"{metric} {summary['final'][metric]:.4f} ({best}{stopped})"
                  if metric in summary["final"] else "no evaluation yet")
        typer.echo(f"{summary['status']}: {target} step {summary['step']}, {scores}, "
                   f"{summary['throughput']['steps_per_s']:.1f} steps/s")
        if summary["status"] == "interrupted":  # a stopped run is not a success; --resume continues it
            raise typer.Exit(130)

    from grp_workbench.harness.config import config_keys_help

    keys = "\n\n".join(f"• {line}" for line in config_keys_help(spec.config_cls))
    command.__doc__ = (f"Train {spec.name} through the harness (run directory, checkpoints, resume, summary).\n\n"
                       f"Config keys (--set KEY=VALUE; a preset changes some defaults):\n\n{keys}")
    return command


@app.command()
def runs(
    root: Annotated[Optional[list[Path]], typer.Argument(help="folders to search (default: runs/)")] = None,
) -> None:
    """List run directories with method, task, seed, status and the last main metric."""
    from grp_workbench.harness.runs import find_runs

    found = list(find_runs(root or [RUNS_ROOT])) if (root or RUNS_ROOT.exists()) else []
    if not found:
        typer.echo("no runs found (train something, e.g. `workbench federated train-classifier`)")
        return
    for run in found:
        header, summary = run.header, run.summary or {}
        metric = summary.get("main_metric")
        value = summary.get("final", {}).get(metric)
        shown = f"{metric}={value:.4g}" if value is not None else ""
        typer.echo(f"{run.path}\t{header.get('method')}\t{header.get('task')}\t"
                   f"seed={header.get('config', {}).get('seed')}\t{run.status()}\t{shown}")


def _names(value: Optional[str]) -> Optional[tuple[str, ...]]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


@app.command()
def bench(
    suite: Annotated[Optional[str], typer.Argument(help="a suite (see --list)")] = None,
    list_suites: Annotated[bool, typer.Option("--list", help="list the suites and stop")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the cells, which are done, and the estimated "
                                          "cost of the rest; train nothing")] = False,
    executor: Annotated[str, typer.Option(help="local (this process) | workers (--workers processes here) | "
                                          "ray (a local Ray instance, or the cluster at --address)")] = "local",
    workers: Annotated[int, typer.Option(min=1, help="processes for --executor workers")] = 2,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (ray://host:10001 or host:6379); the "
                                                   "run root must then be a path every node sees")] = None,
    budget: Annotated[str, typer.Option(help="cpu (what the suite's README reports) | paper")] = "cpu",
    seeds: Annotated[Optional[str], typer.Option(help="comma-separated seeds (default: the budget's)")] = None,
    seeds_per_run: Annotated[Optional[int], typer.Option(min=1, help="most seeds trained together as one batched "
                                                     "run (default: all); 1 lets --workers N train N seeds at "
                                                     "once, as fast on a CPU")] = None,
    methods: Annotated[Optional[str], typer.Option(help="comma-separated methods to run (default: all)")] = None,
    tasks: Annotated[Optional[str], typer.Option(help="comma-separated tasks to run (default: all)")] = None,
    runs: Annotated[Optional[Path], typer.Option(help="run root (default: runs/bench/<suite>)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="results folder (default: benchmarks/<suite>)")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N] | mps")] = "auto",
    report_only: Annotated[bool, typer.Option("--report-only", help="rewrite results.json and the README from "
                                              "the finished cells (with `all`: reports/all/index.md from every "
                                              "suite's results); train nothing")] = False,
) -> None:
    """Run a benchmark suite (or `all`): its declared grid of cells, resumable, with results.json and a README."""
    from grp_workbench.harness.bench import (
        BenchOptions,
        estimated_seconds,
        load_suite,
        plan,
        read_results,
        run_suite,
        suite_names,
        write_combined_report,
        write_suite_results,
    )

    if list_suites or suite is None:
        for name in suite_names():
            typer.echo(name)
        return
    try:
        seed_list = tuple(int(s) for s in _names(seeds)) if seeds else None
    except ValueError:
        raise typer.BadParameter(f"--seeds {seeds!r} must be comma-separated integers, e.g. 0,1,2") from None
    options = BenchOptions(budget=budget, seeds=seed_list, seeds_per_run=seeds_per_run, methods=_names(methods),
                           tasks=_names(tasks), runs=str(runs or ""), out=str(out or ""), device=device)
    if suite == "all":
        failed = []
        for name in [] if report_only or dry_run else suite_names():
            try:  # one suite that cannot run here (a missing optional package) does not stop the others
                run_suite(name, BenchOptions(budget=budget, seeds=seed_list, device=device), executor=executor,
                          workers=workers, address=address, command=f"workbench bench {name} --budget {budget}",
                          quiet=False)
            except WorkbenchError as err:
                failed.append(name)
                typer.echo(f"{name}: stopped: {err}", err=True)
        typer.echo(f"combined report: {write_combined_report(BenchOptions(budget=budget), out or 'reports/all')}")
        if failed:
            typer.echo(f"suites that stopped: {', '.join(failed)} (their finished cells are kept)", err=True)
            raise typer.Exit(1)
        return
    if report_only:
        # the command that made the records, when it was this runner's (a former script's is not rerunnable)
        previous = read_results(load_suite(suite), options) or {}
        command = previous.get("command", "")
        if not command.startswith(f"workbench bench {suite}"):
            command = f"workbench bench {suite} --budget {budget}" + (f" --device {device}" if device != "auto" else "")
        written = write_suite_results(load_suite(suite), options, command)
        typer.echo(f"results: {written}" if written else f"{suite}: no finished cell under "
                   f"{load_suite(suite).run_root(options)}; nothing rewritten")
        return
    if dry_run:
        loaded = load_suite(suite)
        todo = plan(loaded, options)
        typer.echo(f"{loaded.name}: {len(todo.cells)} cell(s), {len(todo.done)} done, {len(todo.todo)} to run "
                   f"(run root {loaded.run_root(options)})")
        for index in todo.todo:
            cell = todo.cells[index]
            seconds = estimated_seconds(loaded, options, cell, todo.done)
            cost = (f"~{seconds / 60:.1f} min at the measured speed" if seconds is not None else "cost unknown")
            seeds = (f"seeds {cell.members[0]}-{cell.members[-1]} (batched)" if cell.members
                     else f"seed {cell.seed}")
            what = (f"{len(cell.outputs)} records ({', '.join(sorted({f'{m} {t}' for m, t, _ in cell.outputs}))})"
                    if cell.outputs else f"{cell.method} {cell.task} {seeds}")
            typer.echo(f"  to run: {what} -> {cell.run} ({cost})")
        return
    command = "workbench " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("workbench") else ""
    after = run_suite(suite, options, executor=executor, workers=workers, address=address, command=command,
                      quiet=False)
    typer.echo(f"{suite}: {len(after.done)} of {len(after.cells)} cells done")


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories or folders containing runs")],
    out: Annotated[Path, typer.Option(help="report folder")] = Path("reports/latest"),
    metric: Annotated[str | None, typer.Option(help="evaluation metric (default: each run's main metric)")] = None,
    title: Annotated[str, typer.Option(help="report title")] = "workbench report",
) -> None:
    """Write a markdown report (IQM ± 95% CI tables, learning curves, bar charts) for finished runs."""
    from grp_workbench.harness.report import write_report

    path = write_report(run_dirs, out, metrics=metric, title=title)
    typer.echo(f"report written to {path}")


@app.command()
def info(device: Annotated[str, typer.Option(help="device to resolve")] = "auto",
         precision: Annotated[str, typer.Option(help="precision to resolve")] = "auto") -> None:
    """Show the device and precision a run would use, and the versions that matter."""
    from grp_workbench.harness.device import describe, make_policy
    from grp_workbench.harness.runs import machine_info

    for key, value in {**machine_info(), **describe(make_policy(device, precision))}.items():
        typer.echo(f"{key}: {value}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, HarnessWarning):  # for users: one line, no source location
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main() -> None:
    warnings.showwarning = _show_warning
    try:
        app()
    except WorkbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
