"""Run directories and atomic writes.

A run directory holds::

    config.json      method, task, preset and the resolved config (reproduces the run)
    metrics.jsonl    one JSON object per logged step: {"step", "split", "time", <metric>: value}
    tensorboard/     the same scalars as TensorBoard events
    checkpoints/     step_000001000.pt ... (algorithm state, RNG state, trainer counters)
    summary.json     final and best evaluation, throughput, status

JSON files and checkpoints are written to a temporary file in the same folder and renamed, so a
crash or Ctrl-C leaves either the old file or the new one, never half of one. ``metrics.jsonl`` is
append-only with one ``write`` per line; a resumed run truncates it back to the line count its
checkpoint recorded, and readers ignore a torn final line.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from grp_workbench.harness.errors import HarnessError

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.json", "metrics.jsonl", "summary.json"
CHECKPOINT_DIR, TENSORBOARD_DIR = "checkpoints", "tensorboard"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    # Serialize fully before touching the disk: an unserializable value must not leave a stub file.
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise HarnessError(f"{path} is not valid JSON ({err}); restore it or delete the run directory.") from None


def git_commit(cwd: str | os.PathLike | None = None, ignore: str | os.PathLike | None = None) -> str:
    """The commit of the code that ran, with ``-dirty`` when the work tree had changes.

    ``ignore``: a folder whose changes do not count, such as a benchmark's own results folder,
    which the benchmark rewrites (and git tracks) while it runs.
    """
    if os.environ.get("WORKBENCH_GIT_COMMIT"):  # named by a launcher that copied the tree (a remote GPU machine)
        return os.environ["WORKBENCH_GIT_COMMIT"]
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        # an ignored folder outside the repository (a results folder under /tmp) changes nothing here
        inside = ignore is not None and Path(ignore).resolve().is_relative_to(Path(top).resolve())
        pathspec = ["--", ".", f":(exclude){Path(ignore).resolve()}"] if inside else []
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", *pathspec], cwd=top,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunDir:
    """One run's folder. Create it with ``RunDir.create``; open an existing one with ``RunDir(path)``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._writer = None

    # ---- creation and status -------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, header: dict[str, Any], if_exists: str = "error") -> RunDir:
        """Make a run directory and save its ``config.json``.

        ``if_exists``: ``error`` (default) refuses an existing run, ``resume`` returns it as it is
        (the caller checks that the configs agree), ``overwrite`` deletes it first.
        """
        run = cls(path)
        if run.exists():
            if if_exists == "resume":
                return run
            if if_exists == "overwrite":
                shutil.rmtree(run.path)
            else:
                raise run.exists_error()
        elif run.path.exists() and any(run.path.iterdir()):
            raise HarnessError(
                f"{run.path} exists and is not a run directory (no {CONFIG_FILE}); choose another --run-dir."
            )
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.path / CONFIG_FILE, {**header, "created": now_iso(), "git_commit": git_commit()})
        return run

    def exists(self) -> bool:
        return (self.path / CONFIG_FILE).is_file()

    def exists_error(self) -> HarnessError:
        return HarnessError(
            f"run directory {self.path} already exists ({self.status()}). Pass --resume to continue "
            "it, --overwrite to replace it, or --run-dir to choose another directory."
        )

    @property
    def header(self) -> dict[str, Any]:
        return read_json(self.path / CONFIG_FILE)

    @property
    def summary(self) -> dict[str, Any] | None:
        file = self.path / SUMMARY_FILE
        return read_json(file) if file.is_file() else None

    def is_finished(self) -> bool:
        summary = self.summary
        return bool(summary) and summary.get("status") == "finished"

    def status(self) -> str:
        if self.is_finished():
            return f"finished at step {self.summary['step']}"
        ckpt = self.latest_checkpoint()
        return f"incomplete, last checkpoint at step {checkpoint_step(ckpt)}" if ckpt else "started, no checkpoint"

    # ---- metrics ---------------------------------------------------------------------------
    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Append one row to ``metrics.jsonl`` and the same scalars to TensorBoard."""
        row = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        row.update({k: float(v) for k, v in metrics.items()})
        line = json.dumps(row) + "\n"
        with open(self.path / METRICS_FILE, "a") as f:
            f.write(line)
        writer = self.tensorboard()
        for key, value in metrics.items():
            writer.add_scalar(f"{split}/{key}", float(value), int(step))

    def read_metrics(self, split: str | None = None) -> list[dict[str, Any]]:
        file = self.path / METRICS_FILE
        if not file.is_file():
            return []
        rows = []
        for line in file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill; the resume truncation removes it for good
            if split is None or row.get("split") == split:
                rows.append(row)
        return rows

    def metrics_line_count(self) -> int:
        file = self.path / METRICS_FILE
        return len(file.read_text().splitlines()) if file.is_file() else 0

    def truncate_metrics(self, n_lines: int) -> None:
        """Drop the rows a killed run wrote after its last checkpoint."""
        file = self.path / METRICS_FILE
        if file.is_file():
            lines = file.read_text().splitlines(keepends=True)[:n_lines]
            atomic_write_text(file, "".join(lines))

    def tensorboard(self, purge_step: int | None = None):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides the events a killed run wrote after its last checkpoint.
            self._writer = SummaryWriter(str(self.path / TENSORBOARD_DIR), purge_step=purge_step)
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ---- checkpoints and summary -----------------------------------------------------------
    def save_checkpoint(self, step: int, state: dict[str, Any], keep: int = 2) -> Path:
        path = self.path / CHECKPOINT_DIR / f"step_{int(step):012d}.pt"
        atomic_torch_save(state, path)
        for old in self.checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def checkpoints(self) -> list[Path]:
        folder = self.path / CHECKPOINT_DIR
        return sorted(folder.glob("step_*.pt")) if folder.is_dir() else []

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def load_checkpoint(self, path: Path, map_location: Any = "cpu") -> dict[str, Any]:
        return torch.load(path, map_location=map_location, weights_only=False)

    def last_algorithm_state(self, what: str, how: str) -> dict[str, Any]:
        """The algorithm's state in the last checkpoint, for reusing a trained model elsewhere; a
        missing run or checkpoint is an error naming the run, what was expected (``what``) and ``how``
        to make one."""
        checkpoint = self.latest_checkpoint() if self.exists() else None
        if checkpoint is None:
            raise HarnessError(f"{self.path} holds no {what}; {how}")
        return self.load_checkpoint(checkpoint)["algorithm"]

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / SUMMARY_FILE, summary)


def checkpoint_step(path: Path) -> int:
    return int(path.stem.split("_")[1])


def find_runs(roots: list[str | os.PathLike]) -> Iterator[RunDir]:
    """Every run directory at or below each root, in path order."""
    for root in map(Path, roots):
        if not root.exists():
            raise HarnessError(f"{root} does not exist; pass a run directory or a folder that contains runs.")
        if (root / CONFIG_FILE).is_file():
            yield RunDir(root)
            continue
        for config in sorted(root.rglob(CONFIG_FILE)):
            yield RunDir(config.parent)


@contextlib.contextmanager
def claim(run_path: str | os.PathLike) -> Iterator[bool]:
    """Claim a run directory for this process: yields True if no other live process holds it.

    Several copies of one benchmark command can then share its cells: each trains the next cell
    nobody else holds. The lock (``<run dir>.lock``, an advisory ``flock``) dies with its process,
    so a killed benchmark never leaves a cell claimed."""
    path = Path(run_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
