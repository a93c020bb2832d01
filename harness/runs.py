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
import errno
import fcntl
import hashlib
import io
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from grp_workbench.harness.errors import HarnessError, HarnessWarning

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.json", "metrics.jsonl", "summary.json"
CHECKPOINT_DIR, TENSORBOARD_DIR = "checkpoints", "tensorboard"


class _RenamedModules(pickle.Unpickler):
    """Checkpoints written before the folders became sub-packages of ``grp_workbench`` name pickled
    classes by their old paths (``envs.levels.Level``); read those under the new ones."""

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] in ("harness", "rl", "envs", "federated", "recsys"):
            module = f"grp_workbench.{module}"
        return super().find_class(module, name)


_legacy_pickle = types.SimpleNamespace(Unpickler=_RenamedModules, load=pickle.load, __name__="pickle")


class CorruptCheckpoint(HarnessError):
    """A checkpoint file that does not load (truncated by a full disk or a crash of the file system)."""


def _default_file_mode() -> int:
    """0666 less the umask: what ``open(..., "w")`` gives, so every output has the same mode
    (``mkstemp`` alone would leave atomically written files at 0600). Read once: reading the umask
    means setting it, which must not race with threads that create files."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _default_file_mode()


class StorageError(HarnessError, OSError):
    """A write the disk refused, as one line for users (still an ``OSError`` for callers that catch those)."""


def storage_error(path: str | os.PathLike, err: OSError, what: str = "write") -> StorageError:
    """One line for a disk that refuses a write: full, read-only, not permitted, or a file in the way."""
    reason = {
        errno.ENOSPC: "the disk is full; free some space",
        errno.EDQUOT: "the disk quota is exhausted; free some space",
        errno.EROFS: "the file system is read-only; choose a writable folder",
        errno.EACCES: "permission denied; choose a folder you can write to",
        errno.EPERM: "permission denied; choose a folder you can write to",
        errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
        errno.EEXIST: "a file of that name is in the way; choose another path",
    }.get(err.errno, f"{err.strerror or err}; choose another folder")
    return StorageError(f"cannot {what} {path}: {reason}.")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise storage_error(path, err) from None
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


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def require_writable_folder(path: str | os.PathLike, what: str = "run directory") -> None:
    """Fail fast, with one line, when ``path`` could not be created or written: before any data loads.

    Walks up to the nearest existing ancestor; it must be a folder this process can write to."""
    path = Path(path).expanduser().absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise HarnessError(f"cannot create the {what} {path}: {probe} is a file, not a folder; choose another path.")
    if not os.access(probe, os.W_OK | os.X_OK):
        reason = "the file system is read-only" if _read_only_fs(probe) else "permission denied"
        raise HarnessError(f"cannot create the {what} {path}: {probe} is not writable ({reason}); "
                           "choose a folder you can write to.")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


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
        """finished | running (pid) | interrupted (Ctrl-C, resumable) | incomplete (killed, resumable)."""
        summary = self.summary or {}
        if summary.get("status") == "finished":
            return f"finished at step {summary['step']}"
        holder = writer_of(self.path)
        if holder:
            return f"running ({holder})"
        ckpt = self.latest_checkpoint()
        at = f"last checkpoint at step {checkpoint_step(ckpt)}" if ckpt else "no checkpoint"
        if summary.get("status") == "interrupted":
            return f"interrupted, {at}"
        return f"incomplete, {at}" if ckpt else "started, no checkpoint"

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
        # Checkpoints hold RNG states and optimizer state as pickles: load only runs you trust
        # (your own, or from someone you would run code from).
        try:
            return torch.load(path, map_location=map_location, weights_only=False, pickle_module=_legacy_pickle)
        except Exception as err:  # truncated by a full disk, or not a checkpoint at all
            raise CorruptCheckpoint(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); delete it to "
                                    "fall back to the one before, or start a new run.") from None

    def load_latest_checkpoint(self, map_location: Any = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads; a corrupt newer one is skipped with a warning naming it."""
        for path in reversed(self.checkpoints()):
            try:
                return path, self.load_checkpoint(path, map_location)
            except CorruptCheckpoint as err:
                warnings.warn(f"{err} Using the checkpoint before it.", HarnessWarning, stacklevel=2)
        return None

    def last_algorithm_state(self, what: str, how: str) -> dict[str, Any]:
        """The algorithm's state in the last checkpoint, for reusing a trained model elsewhere; a
        missing run or checkpoint is an error naming the run, what was expected (``what``) and ``how``
        to make one."""
        found = self.load_latest_checkpoint() if self.exists() else None
        if found is None:
            raise HarnessError(f"{self.path} holds no {what}; {how}")
        path, state = found
        if not self.is_finished():
            warnings.warn(f"{self.path} is not a finished run ({self.status()}); using its {what} from step "
                          f"{checkpoint_step(path)}.", HarnessWarning, stacklevel=2)
        return state["algorithm"]

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


_CLAIMED: set[Path] = set()  # run directories this process holds (claims nest within a process)


def _lock_file(run_path: str | os.PathLike) -> Path:
    path = Path(run_path).absolute()
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def claim(run_path: str | os.PathLike) -> Iterator[bool]:
    """Claim a run directory for this process: yields True if no other live process holds it.

    Every writer of a run holds its claim (``harness.trainer.train`` takes it), so a run folder has
    one writer; several copies of one benchmark command share its cells, each training the next cell
    nobody else holds. The lock (``<run dir>.lock``, an advisory ``flock``) records the holder's pid
    and command and dies with its process, so a killed run never stays claimed. A claim this
    process already holds is granted again (a benchmark claims a cell, then trains it)."""
    key = Path(run_path).absolute()
    if key in _CLAIMED:
        yield True
        return
    lock = _lock_file(key)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+")
    except OSError as err:
        raise storage_error(lock, err, "create the lock file") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}: {command_line()}\n")
        handle.flush()
        _CLAIMED.add(key)
        try:
            yield True
        finally:
            _CLAIMED.discard(key)
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def hold_run(run_path: str | os.PathLike) -> Iterator[None]:
    """Be the one writer of a run directory, or stop with one line naming the process that is."""
    with claim(run_path) as claimed:
        if not claimed:
            raise HarnessError(f"run directory {run_path} is being written by another process "
                               f"({writer_of(run_path) or 'pid unknown'}); wait for it to finish, stop it, or "
                               "choose another --run-dir.")
        yield


def writer_of(run_path: str | os.PathLike) -> str | None:
    """``"pid N: command"`` of the live process writing the run, or None when nobody holds it."""
    lock = _lock_file(run_path)
    if not lock.is_file() or Path(run_path).absolute() in _CLAIMED:
        return None
    try:
        with open(lock, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                return handle.read().strip() or "pid unknown"
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
