"""Deterministic evaluation of batched-member policies, shared by every RL method that trains several
seeds as members of one network (offline TD3+BC / A2PR / BC, online MBPO).

Member k of a run with seed s is seed s + k; its evaluation episodes reset with the seeds a lone run
of seed s + k would use (``s + k + offset + i``, the official TD3+BC / A2PR ``seed + 100 + i``), so a
batched run and k separate runs see the same start states.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from grp_workbench.envs import make_env

MemberPolicy = Callable[[np.ndarray], torch.Tensor]
"""(members, episodes, obs) raw float64 observations -> (members, episodes, act) actions."""


def member_evaluation_seeds(seed: int, members: int, episodes: int, offset: int) -> list[int]:
    """Reset seeds of the evaluation episodes, member-major."""
    return [seed + k + offset + i for k in range(members) for i in range(episodes)]


@torch.no_grad()
def batched_episode_returns(env_id: str, policy: MemberPolicy, *, seed: int, members: int, episodes: int,
                            offset: int) -> np.ndarray:
    """(members, episodes) undiscounted returns, every member's episodes stepped as one vector env."""
    n_envs = members * episodes
    vector_env = gym.vector.SyncVectorEnv([lambda: make_env(env_id) for _ in range(n_envs)])
    observations, _ = vector_env.reset(seed=member_evaluation_seeds(seed, members, episodes, offset))
    returns, running = np.zeros(n_envs), np.ones(n_envs, dtype=bool)
    try:
        while running.any():
            actions = policy(observations.reshape(members, episodes, -1)).reshape(n_envs, -1).cpu().numpy()
            observations, rewards, terminated, truncated, _ = vector_env.step(actions)
            returns += rewards * running
            running &= ~(terminated | truncated)
    finally:
        vector_env.close()
    return returns.reshape(members, episodes)
