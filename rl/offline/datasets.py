"""Offline RL datasets: D4RL HDF5 files, Minari datasets, locally built data, and normalized scores.

Every source ends up as one ``TransitionDataset`` of (s, a, r, s', done) float32 arrays with
D4RL's ``qlearning_dataset`` semantics:

* ``done`` is the ``terminals`` flag only: a ``timeouts`` step (the time limit cut the episode) is
  not a terminal, so the agent keeps bootstrapping there;
* when the file stores no ``next_observations``, s' of step i is ``observations[i + 1]`` and steps
  whose episode was cut by a timeout are skipped (their s' would come from the next episode), as
  D4RL does; stored ``next_observations`` are used as they are, and timeout steps are then kept.

Normalized score = 100 · (return − random) / (expert − random). D4RL data uses D4RL's reference
returns; data built here (``envs/datasets.py``) stores the returns of its own random and expert
policies on the same Gymnasium environment version, and scores from it are labelled ``local``.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grp_workbench.harness.data import cache_dir
from grp_workbench.harness.runs import atomic_write_text, require_writable_folder, storage_error
from grp_workbench.rl import RLError

# D4RL's REF_MIN_SCORE / REF_MAX_SCORE (d4rl/infos.py), shared by all -v0..-v2 levels of a task.
D4RL_REFERENCE_RETURNS = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}
GYMNASIUM_ENV_IDS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5",
                     "ant": "Ant-v5"}
LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")
REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


@dataclass
class TransitionDataset:
    """(s, a, r, s', done) transitions of one task, with what is needed to score a policy on it."""

    name: str
    env_id: str  # the Gymnasium environment the policy is evaluated on
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    dones: np.ndarray
    ref_min_return: float
    ref_max_return: float
    score_source: str  # "d4rl" | "local" | "minari"
    source: str = ""  # where it was read from
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    def normalized_score(self, episode_return: float | np.ndarray) -> float | np.ndarray:
        return 100.0 * (episode_return - self.ref_min_return) / (self.ref_max_return - self.ref_min_return)

    def state_statistics(self, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (+ eps) of the observations, as TD3+BC and A2PR normalize states."""
        return self.observations.mean(0), self.observations.std(0) + eps


def task_family(name: str) -> str:
    """'hopper-medium-replay-v2' / 'hopper_medium_replay-v2' (D4RL's download names) / 'Hopper-v5' /
    'mujoco/hopper/medium-v0' / 'pointreach-medium' -> 'hopper' or 'pointreach' (or '' if unknown)."""
    words = re.split(r"[-_/.\s]+", name.lower())
    return next((family for family in (*D4RL_REFERENCE_RETURNS, "pointreach") if family in words), "")


def d4rl_task_name(name: str) -> str:
    """A D4RL file or dataset name as this project names tasks: 'hopper_medium_replay-v2' ->
    'hopper-medium-replay' (the version and the download name's underscores dropped)."""
    return re.sub(r"-v\d+$", "", name.replace("_", "-"))


def d4rl_normalized_score(task: str, episode_return: float) -> float:
    family = task_family(task)
    if family not in D4RL_REFERENCE_RETURNS:
        raise RLError(f"no D4RL reference returns for task {task!r}; known: {', '.join(D4RL_REFERENCE_RETURNS)}.")
    low, high = D4RL_REFERENCE_RETURNS[family]
    return 100.0 * (episode_return - low) / (high - low)


# ---- validation and D4RL semantics ---------------------------------------------------------------
def validate_arrays(arrays: dict[str, np.ndarray], source: str, obs_dim: int | None = None,
                    action_dim: int | None = None) -> None:
    """Raise one clear error naming the file, the key and the fix for any inconsistent array."""
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise RLError(f"{source}: missing key(s) {', '.join(missing)}; a D4RL-format file needs "
                      f"{', '.join(REQUIRED_KEYS)} (next_observations optional). Rebuild or convert the file.")
    n = len(arrays["observations"])
    for key, value in arrays.items():
        if len(value) != n:
            raise RLError(f"{source}: key {key!r} has {len(value)} rows but 'observations' has {n}; every key "
                          "must have one row per step. The file is truncated or mixes datasets: rebuild it.")
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
            raise RLError(f"{source}: key {key!r} has dtype {value.dtype}, expected numbers.")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            bad = int(np.flatnonzero(~np.isfinite(value.reshape(n, -1)).all(1))[0])
            raise RLError(f"{source}: key {key!r} holds NaN/inf (first at row {bad}); drop those steps or "
                          "rebuild the dataset.")
    for key, width in (("observations", obs_dim), ("next_observations", obs_dim), ("actions", action_dim)):
        if key in arrays and arrays[key].ndim != 2:
            raise RLError(f"{source}: key {key!r} has shape {arrays[key].shape}, expected (steps, dim).")
        if key in arrays and width is not None and arrays[key].shape[1] != width:
            raise RLError(f"{source}: key {key!r} has width {arrays[key].shape[1]} but the environment expects "
                          f"{width}; the dataset was made for another environment (name the matching one with "
                          "--set env=ENV_ID).")
    for key in ("rewards", "terminals", "timeouts"):
        if arrays[key].ndim != 1:
            raise RLError(f"{source}: key {key!r} has shape {arrays[key].shape}, expected (steps,).")


def qlearning_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """D4RL's ``qlearning_dataset``: done = terminal only; without stored s', skip timeout steps."""
    terminals = arrays["terminals"].astype(bool)
    timeouts = arrays["timeouts"].astype(bool)
    if "next_observations" in arrays:
        keep = np.ones(len(terminals), dtype=bool)
        next_obs = arrays["next_observations"]
    else:
        # step i uses observations[i + 1]; the last step and cut episodes' final steps have no successor
        keep = np.zeros(len(terminals), dtype=bool)
        keep[:-1] = ~timeouts[:-1]
        next_obs = np.concatenate([arrays["observations"][1:], arrays["observations"][-1:]])
    return {
        "observations": arrays["observations"][keep].astype(np.float32),
        "actions": arrays["actions"][keep].astype(np.float32),
        "rewards": arrays["rewards"][keep].astype(np.float32),
        "next_observations": next_obs[keep].astype(np.float32),
        "dones": terminals[keep].astype(np.float32),
    }


# ---- HDF5 (D4RL layout) --------------------------------------------------------------------------
def write_d4rl_hdf5(path: str | os.PathLike, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> Path:
    """Write D4RL's flat layout (+ our metadata as file attributes), atomically."""
    import h5py

    path = Path(path)
    validate_arrays(arrays, str(path))
    require_writable_folder(path.parent, "dataset folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    # HDF5 has crashed the process on a full disk: check for room first (uncompressed size, an upper bound)
    needed, free = sum(a.nbytes for a in arrays.values()) + (1 << 20), shutil.disk_usage(path.parent).free
    if free < needed:
        raise RLError(f"cannot write {path}: {free / 2**20:.0f} MiB free, up to {needed / 2**20:.0f} MiB needed; free "
                      "some space or point $WORKBENCH_CACHE at another disk.")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=value, compression="gzip", compression_opts=1)
            for key, value in attrs.items():
                f.attrs[key] = value
        os.replace(tmp, path)
    except OSError as err:
        raise storage_error(path, err) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_d4rl_hdf5(path: str | os.PathLike, env_id: str | None = None) -> TransitionDataset:
    """A D4RL-format HDF5 file (D4RL's own, or one built here) as transitions ready for training."""
    import h5py

    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise RLError(f"dataset file {path} {what}; pass the path of a D4RL-format .hdf5 file.")
    try:
        with h5py.File(path, "r") as f:
            arrays = {k: f[k][()] for k in (*REQUIRED_KEYS, "next_observations") if k in f}
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    except OSError as error:
        raise RLError(f"{path} is not a readable HDF5 file ({error}); rebuild or re-download it.") from error
    family = task_family(attrs.get("name", "") or path.stem)
    env_id = env_id or attrs.get("env_id") or GYMNASIUM_ENV_IDS.get(family)
    if not env_id:
        raise RLError(f"{path}: cannot tell which environment the data comes from; pass it with --set env=ENV_ID "
                      "(e.g. env=Hopper-v5).")
    obs_dim, action_dim = _space_dims(env_id)
    validate_arrays(arrays, str(path), obs_dim, action_dim)
    if "ref_min_return" in attrs:
        low, high, source = attrs["ref_min_return"], attrs["ref_max_return"], attrs.get("score_source", "local")
    elif family in D4RL_REFERENCE_RETURNS:
        (low, high), source = D4RL_REFERENCE_RETURNS[family], "d4rl"
    else:
        raise RLError(f"{path}: no reference returns stored and no D4RL reference for it; cannot normalize scores.")
    return TransitionDataset(name=str(attrs.get("name", path.stem)), env_id=env_id, **qlearning_arrays(arrays),
                             ref_min_return=float(low), ref_max_return=float(high), score_source=source,
                             source=str(path), metadata=attrs)


def describe_hdf5(path: str | os.PathLike) -> dict[str, Any]:
    """Size and episode returns of a D4RL-format file: what a dataset table reports (D4RL's papers
    list each dataset's transitions and behaviour returns). Episodes end at a terminal or a
    timeout; a trailing unfinished episode is left out of the returns."""
    data = read_d4rl_hdf5(path)  # validates
    import h5py

    with h5py.File(Path(path).expanduser(), "r") as f:
        rewards, ends = f["rewards"][()], f["terminals"][()].astype(bool) | f["timeouts"][()].astype(bool)
    end_rows = np.flatnonzero(ends)
    returns = np.array([segment.sum() for segment in np.split(rewards, end_rows + 1)[: len(end_rows)]])
    if not len(returns):
        returns = np.array([rewards.sum()])
    return {"name": data.name, "env_id": data.env_id, "transitions": int(len(rewards)), "episodes": int(len(end_rows)),
            "return_mean": float(returns.mean()), "return_min": float(returns.min()),
            "return_max": float(returns.max()), "normalized_return_mean": float(data.normalized_score(returns.mean())),
            "ref_min_return": data.ref_min_return, "ref_max_return": data.ref_max_return,
            "score_source": data.score_source}


def _space_dims(env_id: str) -> tuple[int | None, int | None]:
    """Observation and action sizes of a Gymnasium environment, or (None, None) if it cannot be made."""
    from grp_workbench.envs import make_env

    try:
        env = make_env(env_id)
    except Exception:  # validation is best effort; training fails loudly later if the env is missing
        return None, None
    try:
        return int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    finally:
        env.close()


# ---- Minari and d4rl -----------------------------------------------------------------------------
def read_minari(dataset_id: str) -> TransitionDataset:
    """A Minari dataset already on local disk (``minari download`` is up to the user)."""
    try:
        import minari
    except ImportError as error:
        raise RLError(f"reading {dataset_id!r} needs the minari package: pip install minari.") from error
    try:
        dataset = minari.load_dataset(dataset_id, download=False)
    except Exception as error:
        raise RLError(f"Minari dataset {dataset_id!r} is not on this machine ({error}); this project never "
                      f"downloads data at run time: run `minari download {dataset_id}` yourself.") from error
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("observations", "actions", "rewards", "next_observations",
                                                          "terminals", "timeouts")}
    for episode in dataset.iterate_episodes():
        parts["observations"].append(episode.observations[:-1])
        parts["next_observations"].append(episode.observations[1:])
        parts["actions"].append(episode.actions)
        parts["rewards"].append(episode.rewards)
        parts["terminals"].append(episode.terminations)
        parts["timeouts"].append(episode.truncations)
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    env_spec = dataset.spec.env_spec
    env_id = env_spec.id if env_spec is not None else GYMNASIUM_ENV_IDS[task_family(dataset_id)]
    validate_arrays(arrays, dataset_id, *_space_dims(env_id))
    try:
        low = float(dataset.storage.metadata["ref_min_score"])
        high = float(dataset.storage.metadata["ref_max_score"])
    except (KeyError, AttributeError, TypeError) as error:
        raise RLError(f"Minari dataset {dataset_id!r} has no ref_min_score / ref_max_score metadata.") from error
    return TransitionDataset(name=dataset_id, env_id=env_id, **qlearning_arrays(arrays), ref_min_return=low,
                             ref_max_return=high, score_source="minari", source=dataset_id)


def read_d4rl(name: str, env_id: str | None = None) -> TransitionDataset:
    """Through the ``d4rl`` package itself, only when it imports (it needs gym and mujoco-py)."""
    try:
        import d4rl  # noqa: F401
        import gym
    except Exception as error:
        raise RLError(f"d4rl:{name} needs the d4rl package, which does not import here ({error}); point --dataset "
                      f"at the D4RL .hdf5 file instead.") from error
    raw = gym.make(name).get_dataset()
    arrays = {k: np.asarray(raw[k]) for k in (*REQUIRED_KEYS, "next_observations") if k in raw}
    family = task_family(name)
    validate_arrays(arrays, f"d4rl:{name}")
    low, high = D4RL_REFERENCE_RETURNS[family]
    return TransitionDataset(name=name, env_id=env_id or GYMNASIUM_ENV_IDS[family], **qlearning_arrays(arrays),
                             ref_min_return=low, ref_max_return=high, score_source="d4rl", source=f"d4rl:{name}")


# ---- one entry point -----------------------------------------------------------------------------
def built_dataset_dir(name: str) -> Path:
    """Every build of ``name`` (``<cache>/offline_rl/<name>/seed<S>-steps<N>-<key>.hdf5``, one file per
    set of build inputs, never overwritten) and a ``current`` file naming the one ``name`` means."""
    return cache_dir("offline_rl", name)


def current_dataset_path(name: str) -> Path | None:
    """The file a built name stands for: its last build (``workbench rl data build``), else a file
    of the flat layout of earlier versions (``<cache>/offline_rl/<name>.hdf5``), else None."""
    pointer = built_dataset_dir(name) / "current"
    if pointer.is_file():
        path = pointer.parent / pointer.read_text().strip()
        if path.is_file():
            return path
    legacy = cache_dir("offline_rl") / f"{name}.hdf5"
    return legacy if legacy.is_file() else None


def make_current(name: str, path: Path) -> None:
    atomic_write_text(built_dataset_dir(name) / "current", path.name + "\n")


def load_dataset(spec: str, env_id: str | None = None) -> TransitionDataset:
    """``path/to/file.hdf5`` | ``minari:<id>`` | ``d4rl:<name>`` | a locally built name such as
    ``hopper-medium-replay`` (from the project cache; ``workbench rl data build <name>`` makes it)."""
    if spec.startswith("minari:"):
        return read_minari(spec.removeprefix("minari:"))
    if spec.startswith("d4rl:"):
        return read_d4rl(spec.removeprefix("d4rl:"), env_id)
    return read_d4rl_hdf5(dataset_file(spec), env_id)


def dataset_file(spec: str) -> Path:
    """The HDF5 file of ``path/to/file.hdf5`` or of a locally built name (which must be built)."""
    if spec.endswith((".hdf5", ".h5")) or os.sep in spec:
        path = Path(spec).expanduser()
        if path.is_dir():
            raise RLError(f"dataset path {path} is a folder; pass the .hdf5 file inside it.")
        return path
    path = current_dataset_path(spec)
    if path is None:
        raise RLError(f"dataset {spec!r} is not built yet (nothing under {built_dataset_dir(spec)}): run `workbench "
                      f"rl data build {spec}`, or pass a .hdf5 path, minari:<id> or d4rl:<name>.")
    return path


def dataset_inputs(spec: str) -> dict[str, Path]:
    """What a run on ``spec`` reads from disk, for the run's input checksums (``MethodSpec.inputs``):
    a built dataset or an .hdf5 file; Minari and d4rl data live in their own stores."""
    return {} if spec.startswith(("minari:", "d4rl:")) else {"dataset": dataset_file(spec)}
