"""The one training loop, shared by gradient-step and environment-interaction methods.

A method hands the trainer an object that follows ``Algorithm``:

* ``update()`` does one unit of training and returns the numbers worth logging. A gradient-step
  method samples its own batch (from a generator it keeps in its state) and takes one step; an
  online method collects a rollout and updates, and reports how many environment steps that took
  under the key ``"steps"``. The trainer counts steps in that unit.
* ``evaluate()`` returns evaluation metrics; ``main_metric`` names the one shown in the progress
  bar and used to pick the best evaluation (``higher_is_better`` says which way is better). An
  algorithm whose main metric is a test metric sets ``selects_best = False`` (no best is kept: a
  best chosen on test is not a result), and one with ``early_stop_evals = N > 0`` stops after N
  evaluations without a better main metric (the summary's ``stopped_early`` is that step).
* ``state_dict()`` / ``load_state_dict()`` hold everything needed to continue (networks,
  optimizers, private generators, buffers). The trainer adds the global RNG state and its own
  counters, so a killed run resumed from its last checkpoint finishes exactly like an
  uninterrupted one (same seed; ``deterministic=True`` on a GPU).
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

from grp_workbench.harness.config import TrainConfig, config_from_dict, config_to_dict, diff_configs
from grp_workbench.harness.device import DevicePolicy, describe, make_policy
from grp_workbench.harness.errors import HarnessError
from grp_workbench.harness.runs import (
    CONFIG_FILE,
    RunDir,
    checkpoint_step,
    command_line,
    file_sha256,
    hold_run,
    now_iso,
    require_writable_folder,
)
from grp_workbench.harness.seeding import global_rng_state, seed_everything, set_global_rng_state

PROGRESS_LINE_SECONDS = 30.0


@runtime_checkable
class Algorithm(Protocol):
    """What the trainer drives. Optional attributes, read with defaults: ``bar_metrics`` (training
    metrics shown on the progress bar), ``early_stop_evals`` (patience in evaluations, 0 = never) and
    ``selects_best`` (whether the best evaluation is tracked)."""

    main_metric: str
    higher_is_better: bool

    def update(self) -> dict[str, float]: ...

    def evaluate(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _crossed(before: int, after: int, every: int) -> bool:
    return after // every > before // every


@dataclass
class _Progress:
    """Trainer counters; saved in every checkpoint."""

    step: int = 0
    updates: int = 0
    update_seconds: float = 0.0
    eval_seconds: float = 0.0
    wall_seconds: float = 0.0
    last_eval: dict[str, float] = field(default_factory=dict)
    last_eval_step: int = -1
    best_eval: dict[str, float] = field(default_factory=dict)
    best_step: int = -1
    stopped_early: int = -1  # step at which early stopping ended the run (-1: it did not)
    train_sums: dict[str, float] = field(default_factory=dict)
    train_count: int = 0  # updates since the last log
    # updates that produced each metric since the last log: a metric an update reports only now and
    # then (a delayed actor step) is averaged over the updates that reported it, not over all
    train_counts: dict[str, int] = field(default_factory=dict)
    resumed_from: list[int] = field(default_factory=list)


class Trainer:
    def __init__(
        self,
        run: RunDir,
        algorithm: Algorithm,
        config: TrainConfig,
        quiet: bool = False,
        summary_extra: dict[str, Any] | None = None,
    ):
        if not isinstance(algorithm, Algorithm):
            raise TypeError(f"{type(algorithm).__name__} does not implement harness.trainer.Algorithm")
        self.run, self.algorithm, self.config = run, algorithm, config
        self.quiet = quiet
        self.summary_extra = summary_extra or {}
        self.progress = _Progress()
        self._stop_requested = False

    # ---- public ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``config.total_steps`` (continuing from the last checkpoint if there is one)."""
        self._resume()
        p, cfg = self.progress, self.config
        bar = tqdm(
            total=cfg.total_steps,
            initial=p.step,
            unit="step",
            dynamic_ncols=True,
            disable=self.quiet or not sys.stderr.isatty(),
        )
        restore_signals = self._install_stop_handlers()
        start = time.perf_counter()
        wall_before = p.wall_seconds
        postfix: dict[str, str] = {}
        # Off a terminal (CI logs, nohup files) a bar draws nothing: print a line now and then instead.
        log_lines = bar.disable and not self.quiet
        next_line = time.monotonic() + PROGRESS_LINE_SECONDS
        try:
            while p.step < cfg.total_steps and not self._stop_requested and p.stopped_early < 0:
                before = p.step
                t0 = time.perf_counter()
                metrics = dict(self.algorithm.update())
                p.update_seconds += time.perf_counter() - t0
                p.step += int(metrics.pop("steps", 1))
                p.updates += 1
                self._accumulate(metrics)
                if _crossed(before, p.step, cfg.log_every):
                    # this log's training metrics replace the last log's: a sparse one (an episode's
                    # return) must not linger on the bar after newer logs lack it
                    evals = {k: v for k, v in postfix.items() if k.startswith("eval_")}
                    postfix = {**self._log_train(), **evals}
                    bar.set_postfix(postfix, refresh=False)
                if _crossed(before, p.step, cfg.eval_every) or p.step >= cfg.total_steps:
                    self._evaluate()
                    postfix[f"eval_{self.algorithm.main_metric}"] = f"{p.last_eval[self.algorithm.main_metric]:.4g}"
                    bar.set_postfix(postfix, refresh=False)
                    if self._no_recent_improvement():
                        p.stopped_early = p.step
                p.wall_seconds = wall_before + time.perf_counter() - start
                if (_crossed(before, p.step, cfg.checkpoint_every) or p.step >= cfg.total_steps
                        or p.stopped_early >= 0):
                    self._checkpoint()
                bar.update(p.step - before)
                if log_lines and time.monotonic() >= next_line:
                    self._print_progress_line(postfix)
                    next_line = time.monotonic() + PROGRESS_LINE_SECONDS
            p.wall_seconds = wall_before + time.perf_counter() - start
            if self._stop_requested and p.step < cfg.total_steps:
                self._checkpoint()
                summary = self._summary("interrupted")
            else:
                summary = self._summary("finished")
            self.run.write_summary(summary)
            return summary
        finally:
            restore_signals()
            bar.close()
            self.run.close()

    def _print_progress_line(self, postfix: dict[str, str]) -> None:
        p, total = self.progress, self.config.total_steps
        rate = p.step / max(p.update_seconds, 1e-9)
        shown = " ".join(f"{k}={v}" for k, v in postfix.items())
        print(f"{self.run.path}: step {p.step:,}/{total:,} ({100 * p.step / total:.0f}%), {rate:.3g} steps/s {shown}",
              file=sys.stderr, flush=True)

    # ---- steps of the loop -----------------------------------------------------------------
    def _accumulate(self, metrics: dict[str, float]) -> None:
        p = self.progress
        for key, value in metrics.items():
            p.train_sums[key] = p.train_sums.get(key, 0.0) + float(value)
            p.train_counts[key] = p.train_counts.get(key, 0) + 1
        p.train_count += 1

    def _log_train(self) -> dict[str, str]:
        """Write the mean of each training metric since the last log; returns those for the bar (the
        algorithm's ``bar_metrics`` if it names them, else the first two)."""
        p = self.progress
        # a checkpoint of an older version has sums without counts: those were made every update
        means = {k: v / p.train_counts.get(k, p.train_count) for k, v in p.train_sums.items()} if p.train_count else {}
        if means:
            self.run.log(p.step, "train", {**means, "steps_per_s": p.step / max(p.update_seconds, 1e-9)})
        p.train_sums, p.train_count, p.train_counts = {}, 0, {}
        shown = getattr(self.algorithm, "bar_metrics", None) or list(means)[:2]
        return {k: f"{means[k]:.4g}" for k in shown if k in means}

    def _evaluate(self) -> None:
        p = self.progress
        t0 = time.perf_counter()
        metrics = {k: float(v) for k, v in self.algorithm.evaluate().items()}
        p.eval_seconds += time.perf_counter() - t0
        main = self.algorithm.main_metric
        if main not in metrics:
            raise KeyError(f"evaluate() returned {sorted(metrics)} but main_metric is {main!r}")
        if not math.isfinite(metrics[main]):
            raise FloatingPointError(f"evaluation metric {main} is {metrics[main]} at step {p.step}")
        self.run.log(p.step, "eval", metrics)
        p.last_eval, p.last_eval_step = metrics, p.step
        sign = 1 if self.algorithm.higher_is_better else -1
        if getattr(self.algorithm, "selects_best", True) and (
                not p.best_eval or sign * metrics[main] > sign * p.best_eval[main]):
            p.best_eval, p.best_step = metrics, p.step

    def _no_recent_improvement(self) -> bool:
        patience = getattr(self.algorithm, "early_stop_evals", 0)
        p = self.progress
        return bool(patience) and p.best_step >= 0 and p.step - p.best_step >= patience * self.config.eval_every

    def _checkpoint(self) -> None:
        state = {
            "step": self.progress.step,
            "algorithm": self.algorithm.state_dict(),
            "rng": global_rng_state(),
            "progress": vars(self.progress).copy(),
            "metrics_lines": self.run.metrics_line_count(),
        }
        self.run.save_checkpoint(self.progress.step, state, keep=self.config.keep_checkpoints)

    def _resume(self) -> None:
        found = self.run.load_latest_checkpoint()
        if found is None:
            return
        latest, state = found
        self.algorithm.load_state_dict(state["algorithm"])
        set_global_rng_state(state["rng"])
        self.progress = _Progress(**state["progress"])
        self.progress.resumed_from.append(checkpoint_step(latest))
        self.run.truncate_metrics(state["metrics_lines"])
        self.run.tensorboard(purge_step=self.progress.step + 1)

    def _summary(self, status: str) -> dict[str, Any]:
        p = self.progress
        header = self.run.header
        return {
            "status": status,
            "method": header.get("method"),
            "task": header.get("task"),
            "seed": self.config.seed,
            "step": p.step,
            "main_metric": self.algorithm.main_metric,
            "higher_is_better": self.algorithm.higher_is_better,
            "final": {"step": p.last_eval_step, **p.last_eval},
            "best": {"step": p.best_step, **p.best_eval},
            "stopped_early": p.stopped_early if p.stopped_early >= 0 else None,
            "throughput": {
                "steps_per_s": p.step / max(p.update_seconds, 1e-9),
                "updates_per_s": p.updates / max(p.update_seconds, 1e-9),
                "update_seconds": p.update_seconds,
                "eval_seconds": p.eval_seconds,
                "wall_seconds": p.wall_seconds,
            },
            "resumed_from": p.resumed_from,
            "finished": now_iso(),
            **self.summary_extra,
        }

    def _install_stop_handlers(self) -> Callable[[], None]:
        """First Ctrl-C: finish the current update, checkpoint, stop. Second Ctrl-C: stop now.
        SIGTERM (a scheduler's or a benchmark runner's request to stop) always stops gracefully, so
        a Ctrl-C that reaches a run both directly and through its runner saves the checkpoint."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self._stop_requested:
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                return
            self._stop_requested = True
            print("\nstopping after this step (checkpoint will be saved; Ctrl-C again to abort)", file=sys.stderr)

        for sig in previous:
            signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore


# ---- launching a method ------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    """What the harness needs to know to train a method; each method module exports one."""

    name: str  # CLI name, e.g. "a2pr"
    config_cls: type[TrainConfig]
    presets: dict[str, dict[str, Any]]
    build: Callable[[Any, DevicePolicy], Algorithm]  # (config, device policy) -> Algorithm
    task: Callable[[Any], str]  # config -> task name used in reports, e.g. "mnist"
    # config -> {label: file} of built artefacts the run reads (a dataset, a level set); their
    # checksums go into config.json and a resume refuses data that changed under the run
    inputs: Callable[[Any], dict[str, Any]] | None = None
    # preset -> what it costs, shown in --help for presets that take more than a few minutes
    preset_costs: dict[str, str] = field(default_factory=dict)
    # the precisions the method implements (its forward passes autocast or not): with ``auto`` a
    # method without bf16 trains in fp32; asking for one it lacks is an error, never a silent no-op
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    # config -> the variant a run trains when one spec covers several (``el2``, ``finetune``): part of
    # the default run folder, so that two variants of one task never land in the same run
    variant: Callable[[Any], str] | None = None


def device_policy_for(spec: MethodSpec, config: TrainConfig) -> DevicePolicy:
    """The device and precision a run of ``spec`` uses."""
    policy = make_policy(config.device, config.precision)
    if policy.precision in spec.precisions:
        return policy
    if config.precision == "auto":
        return make_policy(config.device, "fp32")
    raise HarnessError(f"{spec.name} trains in {' / '.join(spec.precisions)} only (its updates do not autocast); "
                       f"--precision {config.precision} would be recorded but not used. Drop it or use "
                       f"--precision {spec.precisions[0]}.")


IF_EXISTS = ("error", "resume", "resume-or-start", "overwrite")


def train(
    spec: MethodSpec,
    config: TrainConfig,
    run_dir: str,
    preset: str,
    if_exists: str = "error",
    quiet: bool = False,
) -> dict[str, Any]:
    """Create (or resume) a run directory and train ``spec`` with ``config``; returns ``summary.json``.

    ``if_exists``: ``error`` refuses an existing run; ``resume`` continues one (a missing run is an
    error: a mistyped path must not train from scratch); ``resume-or-start`` continues or starts
    (benchmark cells); ``overwrite`` replaces it. A finished run is left alone, and a run made with
    a different config or on input files that changed since is an error, never a silent mix.

    This process is the run's one writer for the whole call (``runs.hold_run``). The folder's
    writability is checked, the device resolved and the algorithm built before the directory is
    touched, so a bad path, device or dataset leaves no half-made run behind (and ``overwrite``
    deletes nothing).
    """
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists={if_exists!r} is not one of {IF_EXISTS}")
    require_writable_folder(run_dir)
    with hold_run(run_dir):
        existing = RunDir(run_dir)
        if existing.exists():
            if if_exists == "error":
                raise existing.exists_error()
            if if_exists in ("resume", "resume-or-start"):
                _require_same_config(spec, existing, config)
                if existing.is_finished():
                    return existing.summary
        elif if_exists == "resume":
            raise HarnessError(f"--resume: there is no run in {run_dir} to continue (no {CONFIG_FILE}). Check the "
                               "path, or drop --resume to start it (--resume-or-start does either).")
        inputs = fingerprint_inputs(spec.inputs(config) if spec.inputs else {})
        if existing.exists() and if_exists != "overwrite":
            _require_same_inputs(existing, inputs)
        policy = device_policy_for(spec, config)
        seed_everything(config.seed, config.deterministic)
        algorithm = spec.build(config, policy)
        header = {
            "method": spec.name,
            "task": spec.task(config),
            "preset": preset,
            "config": config_to_dict(config),
            "inputs": inputs,
            "command": command_line(),
        }
        mode = "resume" if if_exists == "resume-or-start" else if_exists
        run = RunDir.create(run_dir, header, if_exists=mode)
        return Trainer(run, algorithm, config, quiet=quiet, summary_extra={"device": describe(policy)}).fit()


def fingerprint_inputs(inputs: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``{label: {"path", "sha256"}}`` of the files a run reads (``MethodSpec.inputs``)."""
    return {label: {"path": str(path), "sha256": file_sha256(path)} for label, path in inputs.items()}


def _require_same_inputs(run: RunDir, inputs: dict[str, dict[str, str]]) -> None:
    saved = run.header.get("inputs", {})
    for label, now in inputs.items():
        before = saved.get(label)
        if before and before["sha256"] != now["sha256"]:
            raise HarnessError(
                f"the {label} under run {run.path} changed since it started: it trained on {before['path']} "
                f"(sha256 {before['sha256'][:12]}), which is now {now['path']} (sha256 {now['sha256'][:12]}). "
                "Restore the original (rebuilding with the inputs it was built from, such as the seed and steps in "
                "its file name, reuses a cached build), or start a new --run-dir (or --overwrite)."
            )


def train_cell(spec: MethodSpec, config: TrainConfig, run_dir: str, preset: str, quiet: bool = True) -> dict[str, Any]:
    """One cell of a benchmark (or demo): ``train`` resuming, returning the summary of a finished run.
    A run stopped by Ctrl-C ends the whole benchmark (its checkpoint is saved) instead of being
    counted as a result; the same command continues it."""
    summary = train(spec, config, run_dir, preset, if_exists="resume-or-start", quiet=quiet)
    if summary["status"] == "interrupted":
        raise SystemExit(f"interrupted at step {summary['step']}: {run_dir} keeps its checkpoint; run the same "
                         "command again to continue.")
    return summary


def config_changes(spec: MethodSpec, run: RunDir, config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved, now)}`` for every field where ``config`` differs from the run's saved one."""
    return diff_configs(config_from_dict(spec.config_cls, run.header["config"]), config)


def _require_same_config(spec: MethodSpec, run: RunDir, config: TrainConfig) -> None:
    changed = config_changes(spec, run, config)
    if changed:
        detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise HarnessError(
            f"run directory {run.path} was made with a different config ({detail}). Resume with the same "
            "settings, or pass --overwrite / a new --run-dir."
        )
