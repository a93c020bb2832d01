"""Building D4RL-style offline datasets locally, deterministically from a seed, never downloading.

A dataset is complete episodes of a behaviour policy, appended until ``n_steps`` transitions and
cut there, stored in D4RL's HDF5 layout (``observations, actions, rewards, next_observations,
terminals, timeouts``) with ``terminals`` = the environment's ``terminated`` and ``timeouts`` =
``truncated`` (the time limit), plus metadata: the environment id, the builder, the seed, and the
returns of the random and expert policies that normalize scores (labelled ``local``).

``pointreach-<level>`` datasets (levels random, medium, expert, medium-expert) come from scripted
policies on ``workbench/PointReach-v0`` and build in a second; the tests and the demo use them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers workbench/PointReach-v0)
from envs.point_reach import expert_action
from rl import RLError
from rl.offline.datasets import local_dataset_path, write_d4rl_hdf5

Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # (observation, rng) -> action


def rollout(env_id: str, policy: Policy, n_steps: int, seed: int) -> dict[str, np.ndarray]:
    """Complete episodes of ``policy`` until ``n_steps`` transitions, cut there (as D4RL cut its files)."""
    env = gym.make(env_id)
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
    return arrays


def average_return(env_id: str, policy: Policy, episodes: int, seed: int) -> float:
    env = gym.make(env_id)
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
    return float(np.mean(returns))


# ---- PointReach (scripted behaviour policies) ----------------------------------------------------
POINT_REACH = "workbench/PointReach-v0"


def _uniform(observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, size=2).astype(np.float32)


def _expert(observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return expert_action(observation)


def _medium(observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(expert_action(observation) + rng.normal(0.0, 1.0, size=2), -1.0, 1.0).astype(np.float32)


POINT_REACH_POLICIES: dict[str, Policy] = {"random": _uniform, "medium": _medium, "expert": _expert}


def build_point_reach(level: str, n_steps: int = 20_000, seed: int = 0, path: str | Path | None = None) -> Path:
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
        "name": name, "env_id": POINT_REACH, "builder": "envs.datasets.build_point_reach", "seed": seed,
        "score_source": "local",
        "ref_min_return": average_return(POINT_REACH, _uniform, 100, seed=10_000),
        "ref_max_return": average_return(POINT_REACH, _expert, 100, seed=10_000),
    }
    return write_d4rl_hdf5(path or local_dataset_path(name), arrays, attrs)


def build(name: str, seed: int = 0, n_steps: int | None = None, path: str | Path | None = None) -> Path:
    """Build dataset ``name`` (e.g. ``pointreach-medium``) into the project cache (or ``path``)."""
    family, _, level = name.partition("-")
    if family == "pointreach":
        return build_point_reach(level, n_steps or 20_000, seed, path)
    raise RLError(f"no local builder for {name!r}; available now: pointreach-{{random,medium,expert,medium-expert}}. "
                  "MuJoCo datasets (hopper/halfcheetah/walker2d) need the SAC behaviour policies, not built yet.")
