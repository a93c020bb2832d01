"""Building D4RL-style offline datasets locally, deterministically from a seed, never downloading.

A dataset is complete episodes of a behaviour policy, appended until ``n_steps`` transitions and
cut there, stored in D4RL's HDF5 layout (``observations, actions, rewards, next_observations,
terminals, timeouts``) with ``terminals`` = the environment's ``terminated`` and ``timeouts`` =
``truncated`` (the time limit), plus metadata: the environment id, the builder, the seed, and the
returns of the random and expert policies that normalize scores (labelled ``local``).

``<family>-<level>`` for a family with exported SAC behaviour policies (``envs/behaviour.py``;
hopper, halfcheetah, walker2d on Gymnasium MuJoCo v5), as D4RL made its own:

* ``random``: uniform actions;
* ``medium`` / ``expert``: the medium / expert actor rolled out with *sampled* actions;
* ``medium-replay``: what the replay buffer saw up to the medium snapshot, rebuilt from the
  snapshots: uniform actions for ``learning_starts`` steps, then each snapshot's sampled actions for
  the environment steps until the next snapshot (the real buffer came from a policy that changed
  every step; the rebuild changes it every ``eval_every`` steps). Its size is the medium
  snapshot's step count, whatever ``n_steps`` says;
* ``medium-expert``: medium then expert, concatenated.

``pointreach-<level>`` (random, medium, expert, medium-expert) come from scripted policies on
``workbench/PointReach-v0`` and build in a second; the tests and the demo use them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from grp_workbench.envs import make_env
from grp_workbench.envs.point_reach import expert_action
from grp_workbench.rl import RLError
from grp_workbench.rl.offline.datasets import LEVELS, built_dataset_dir, make_current, write_d4rl_hdf5

Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # (observation, rng) -> action


def rollout(env_id: str, policy: Policy, n_steps: int, seed: int) -> dict[str, np.ndarray]:
    """Complete episodes of ``policy`` until ``n_steps`` transitions, cut there (as D4RL cut its files)."""
    env = make_env(env_id)
    rng = np.random.default_rng(seed)
    keys = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
    columns: dict[str, list] = {k: [] for k in keys}
    episode = 0
    while len(columns["rewards"]) < n_steps:
        observation, _ = env.reset(seed=seed + episode)
        done = False
        while not done:
            action = np.asarray(policy(observation, rng), dtype=np.float32)
            next_observation, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(keys, (observation, action, reward, next_observation, terminated, truncated)):
                columns[key].append(value)
            observation, done = next_observation, terminated or truncated
        episode += 1
    env.close()
    arrays = {k: np.asarray(v[:n_steps]) for k, v in columns.items()}
    for key in ("observations", "actions", "rewards", "next_observations"):
        arrays[key] = arrays[key].astype(np.float32)
    # the cut ends an episode as a time limit does: a reader that takes s' from the next row (D4RL's
    # qlearning_dataset, the official loaders) must not join it to the next rollout's first state
    if not (arrays["terminals"][-1] or arrays["timeouts"][-1]):
        arrays["timeouts"][-1] = True
    return arrays


def episode_returns(env_id: str, policy: Policy, episodes: int, seed: int) -> np.ndarray:
    """Undiscounted returns of ``episodes`` episodes reset with seeds seed, seed + 1, ..."""
    env = make_env(env_id)
    rng = np.random.default_rng(seed)
    returns = []
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            observation, reward, terminated, truncated, _ = env.step(policy(observation, rng))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return np.asarray(returns)


def average_return(env_id: str, policy: Policy, episodes: int, seed: int) -> float:
    return float(episode_returns(env_id, policy, episodes, seed).mean())


# ---- PointReach (scripted behaviour policies) ----------------------------------------------------
POINT_REACH = "workbench/PointReach-v0"


def _uniform(observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, size=2).astype(np.float32)


def _expert(observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return expert_action(observation)


def _medium(observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(expert_action(observation) + rng.normal(0.0, 1.0, size=2), -1.0, 1.0).astype(np.float32)


POINT_REACH_POLICIES: dict[str, Policy] = {"random": _uniform, "medium": _medium, "expert": _expert}


def build_point_reach(level: str, n_steps: int, seed: int, path: str | Path) -> Path:
    if level == "medium-expert":
        halves = [rollout(POINT_REACH, POINT_REACH_POLICIES[lv], n_steps // 2, seed + i)
                  for i, lv in enumerate(("medium", "expert"))]
        arrays = {k: np.concatenate([h[k] for h in halves]) for k in halves[0]}
    elif level in POINT_REACH_POLICIES:
        arrays = rollout(POINT_REACH, POINT_REACH_POLICIES[level], n_steps, seed)
    else:
        raise RLError(f"pointreach level {level!r} is not one of random, medium, expert, medium-expert.")
    name = f"pointreach-{level}"
    attrs = {
        "name": name, "env_id": POINT_REACH, "builder": "grp_workbench.envs.datasets.build_point_reach", "seed": seed,
        "score_source": "local",
        "ref_min_return": average_return(POINT_REACH, _uniform, 100, seed=10_000),
        "ref_max_return": average_return(POINT_REACH, _expert, 100, seed=10_000),
    }
    return write_d4rl_hdf5(path, arrays, attrs)


# ---- SAC behaviour policies (MuJoCo) -------------------------------------------------------------
def _sampled(model) -> Policy:
    def act(observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return model.predict(observation, deterministic=False)[0]

    return act


def deterministic_policy(model) -> Policy:
    def act(observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return model.predict(observation, deterministic=True)[0]

    return act


def _uniform_for(env_id: str) -> Policy:
    space = make_env(env_id).action_space

    def act(observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(space.low, space.high).astype(np.float32)

    return act


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def build_from_behaviour(family: str, level: str, n_steps: int, seed: int, path: str | Path,
                         policies_path: str | Path | None = None) -> Path:
    from grp_workbench.envs.behaviour import load_behaviour_policies, sac_actor_policy
    from grp_workbench.harness.seeding import seed_everything

    seed_everything(seed)  # SB3 samples actions from torch's global generator
    behaviour = load_behaviour_policies(family, policies_path)
    env_id = behaviour["env_id"]
    uniform = _uniform_for(env_id)

    def policy_of(entry: dict) -> Policy:
        return _sampled(sac_actor_policy(env_id, entry["actor"], seed))

    if level == "random":
        arrays = rollout(env_id, uniform, n_steps, seed)
    elif level in ("medium", "expert"):
        arrays = rollout(env_id, policy_of(behaviour[level]), n_steps, seed)
    elif level == "medium-expert":
        arrays = _concat([rollout(env_id, policy_of(behaviour[lv]), n_steps // 2, seed + i)
                          for i, lv in enumerate(("medium", "expert"))])
    elif level == "medium-replay":
        # uniform actions until learning_starts, then snapshot j in charge until snapshot j + 1 was taken
        replay = behaviour["replay"]
        end = replay[-1]["step"]
        cursor = min(behaviour.get("learning_starts") or 0, end)
        parts = [rollout(env_id, uniform, cursor, seed)] if cursor else []
        for j, snapshot in enumerate(replay):
            stop = replay[j + 1]["step"] if j + 1 < len(replay) else end
            if stop > cursor:
                parts.append(rollout(env_id, policy_of(snapshot), stop - cursor, seed + j + 1))
                cursor = stop
        arrays = _concat(parts)
    else:
        raise RLError(f"level {level!r} is not one of {', '.join(LEVELS)}.")
    expert_model = sac_actor_policy(env_id, behaviour["expert"]["actor"], seed)
    attrs = {
        "name": f"{family}-{level}", "env_id": env_id, "builder": "grp_workbench.envs.datasets.build_from_behaviour",
        "seed": seed, "score_source": "local",
        "ref_min_return": average_return(env_id, uniform, 100, seed=10_000),
        "ref_max_return": average_return(env_id, deterministic_policy(expert_model), 10, seed=10_000),
        "medium_return": behaviour["medium"]["return"], "medium_step": behaviour["medium"]["step"],
        "expert_return": behaviour["expert"]["return"], "expert_step": behaviour["expert"]["step"],
    }
    return write_d4rl_hdf5(path, arrays, attrs)


DEFAULT_STEPS = 200_000  # per dataset (D4RL: 1M); a CPU rolls out roughly 1,000 steps/s with a SAC actor
POINT_REACH_STEPS = 20_000
# Bump when a builder makes different data from the same inputs: cached builds are then made anew.
# 2: the last transition of every cut rollout is a timeout (1 left it unflagged).
BUILDER_VERSION = 2


def build_inputs(name: str, seed: int = 0, n_steps: int | None = None) -> dict[str, object]:
    """Everything the data of ``name`` depends on: the cache key of its build."""
    family, _, level = name.partition("-")
    if n_steps is not None and n_steps < 1:
        raise RLError(f"--steps {n_steps}: a dataset needs at least 1 transition (leave it out for the builder's "
                      f"default, {POINT_REACH_STEPS if family == 'pointreach' else DEFAULT_STEPS:,}).")
    if family == "pointreach":
        if level not in ("random", *POINT_REACH_POLICIES, "medium-expert"):
            raise RLError(f"pointreach level {level!r} is not one of random, medium, expert, medium-expert.")
        return {"name": name, "seed": seed, "steps": n_steps or POINT_REACH_STEPS, "behaviour_sha256": None,
                "builder_version": BUILDER_VERSION}
    if level not in LEVELS:
        raise RLError(f"dataset name {name!r} should be <family>-<level> with level one of {', '.join(LEVELS)}.")
    from grp_workbench.envs.behaviour import behaviour_policies_file
    from grp_workbench.harness.runs import file_sha256

    return {"name": name, "seed": seed, "steps": n_steps or DEFAULT_STEPS,
            "behaviour_sha256": file_sha256(behaviour_policies_file(family)), "builder_version": BUILDER_VERSION}


def cached_build_path(name: str, seed: int = 0, n_steps: int | None = None) -> Path:
    """Where the build of these inputs lives in the cache (whether or not it is built yet)."""
    inputs = build_inputs(name, seed, n_steps)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return built_dataset_dir(name) / f"seed{seed}-steps{inputs['steps']}-{key}.hdf5"


def build(name: str, seed: int = 0, n_steps: int | None = None, path: str | Path | None = None) -> Path:
    """Build dataset ``name`` (e.g. ``hopper-medium-replay``) into ``path``, or into the project cache.

    In the cache each set of build inputs (``build_inputs``) has its own file, built once and never
    overwritten: building the same inputs again reuses it, other inputs make another file. The name
    then stands for this build (``--dataset NAME``); a run records the checksum of the file it
    trained on and will not resume on another."""
    inputs = build_inputs(name, seed, n_steps)
    family, _, level = name.partition("-")
    target = Path(path) if path else cached_build_path(name, seed, n_steps)
    if path or not target.is_file():
        if family == "pointreach":
            build_point_reach(level, inputs["steps"], seed, target)
        else:
            build_from_behaviour(family, level, inputs["steps"], seed, target)
    if not path:
        make_current(name, target)
    return target


def export_minari(path: str | Path, dataset_id: str) -> str:
    """Copy a D4RL-format file into a local Minari dataset ``dataset_id`` (under
    ``$MINARI_DATASETS_PATH``, Minari's default ``~/.minari/datasets``), episodes split at terminals
    and timeouts, with the file's reference returns as Minari's ``ref_min_score`` / ``ref_max_score``.
    ``--dataset minari:<dataset_id>`` then reads it back."""
    import h5py

    from grp_workbench.rl.offline.datasets import read_d4rl_hdf5

    try:
        import minari
        from minari.data_collector import EpisodeBuffer
    except ImportError as error:
        raise RLError("a Minari export needs the minari package: pip install minari.") from error
    data = read_d4rl_hdf5(path)  # validates the file first
    with h5py.File(Path(path).expanduser(), "r") as f:
        arrays = {k: f[k][()] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
        next_observations = f["next_observations"][()] if "next_observations" in f else None
    if next_observations is None:
        raise RLError(f"{path} has no next_observations; a Minari episode needs its final observation. "
                      "Rebuild it with `workbench rl data build`.")
    ends = np.flatnonzero(arrays["terminals"].astype(bool) | arrays["timeouts"].astype(bool))
    if not len(ends) or ends[-1] != len(arrays["rewards"]) - 1:
        ends = np.append(ends, len(arrays["rewards"]) - 1)  # an unfinished last episode ends truncated
    episodes, start = [], 0
    for index, end in enumerate(ends):
        rows = slice(start, end + 1)
        truncations = arrays["timeouts"][rows].astype(bool)
        truncations[-1] |= not arrays["terminals"][end]
        episodes.append(EpisodeBuffer(
            id=index, observations=np.concatenate([arrays["observations"][rows], next_observations[end:end + 1]]),
            actions=arrays["actions"][rows], rewards=arrays["rewards"][rows],
            terminations=arrays["terminals"][rows].astype(bool), truncations=truncations))
        start = end + 1
    minari.create_dataset_from_buffers(
        dataset_id, episodes, env=data.env_id, algorithm_name=str(data.metadata.get("builder", "unknown")),
        author="workbench", author_email="n/a", code_permalink="workbench envs/datasets.py (export_minari)",
        ref_min_score=data.ref_min_return, ref_max_score=data.ref_max_return,
        description=f"{data.name}: exported from {path} (D4RL layout, reference returns {data.score_source})",
        data_format="hdf5")
    return dataset_id
