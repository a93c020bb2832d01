"""What TD3+BC and A2PR share: the config, the batched dataset sampler and policy evaluation.

Several seeds train together as one "member" dimension of every network (``n_seeds``): member k
has its own initialization, its own minibatches and its own optimizer state (Adam is elementwise,
so summing the members' losses updates each exactly as if it trained alone). Member k is labelled
seed ``seed + k``; its numbers are not bit-identical to a lone run with that seed, because the
members draw from one random stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from grp_workbench.envs import make_env
from grp_workbench.harness.config import TrainConfig
from grp_workbench.harness.device import DevicePolicy
from grp_workbench.rl import RLError
from grp_workbench.rl.common.evaluation import batched_episode_returns, member_evaluation_seeds
from grp_workbench.rl.offline.datasets import TransitionDataset, d4rl_task_name, dataset_inputs, load_dataset


@dataclass
class OfflineConfig(TrainConfig):
    dataset: str = "hopper-medium-replay"  # built name, path/to/file.hdf5, minari:<id> or d4rl:<name>
    env: str = ""  # evaluation environment; empty = the one the dataset names
    n_seeds: int = 1  # seeds trained side by side as batched networks (seed, seed + 1, ...)
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 0.005
    policy_noise: float = 0.2  # target policy smoothing noise, times max_action
    noise_clip: float = 0.5  # its clip, times max_action
    policy_freq: int = 2  # actor and target updates every policy_freq critic updates
    alpha: float = 2.5  # weight of the Q term relative to behaviour cloning (lambda = alpha / mean|Q|)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    hidden: int = 256
    actor_layers: int = 2
    critic_layers: int = 2
    normalize_states: bool = True  # dataset mean / (std + 1e-3), on s, s' and evaluation observations
    eval_episodes: int = 10
    eval_seed_offset: int = 100  # evaluation episodes reset with seeds seed + offset + i, as the official code
    total_steps: int = 1_000_000  # gradient steps
    eval_every: int = 5000
    log_every: int = 1000
    checkpoint_every: int = 50_000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_seeds < 1 or self.batch_size < 1 or self.eval_episodes < 1:
            raise RLError(f"n_seeds={self.n_seeds}, batch_size={self.batch_size} and eval_episodes="
                          f"{self.eval_episodes} must all be >= 1.")


class BatchSampler:
    """Uniform minibatches with replacement, one independent batch per member, on the device."""

    def __init__(self, data: TransitionDataset, device: torch.device, mean: np.ndarray, std: np.ndarray):
        def tensor(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(x, dtype=torch.float32, device=device)

        self.observations = tensor((data.observations - mean) / std)
        self.next_observations = tensor((data.next_observations - mean) / std)
        self.actions = tensor(data.actions)
        self.rewards = tensor(data.rewards).unsqueeze(-1)
        self.not_dones = 1.0 - tensor(data.dones).unsqueeze(-1)
        self.size = len(data)

    def sample(self, n_members: int, batch_size: int) -> tuple[torch.Tensor, ...]:
        """(s, a, r, s', not_done), each (members, batch, ·)."""
        index = torch.randint(self.size, (n_members, batch_size), device=self.observations.device)
        return (self.observations[index], self.actions[index], self.rewards[index], self.next_observations[index],
                self.not_dones[index])


class OfflineAlgorithm:
    """Dataset loading, state normalization, evaluation and checkpoint plumbing for offline methods."""

    main_metric = "normalized_score"
    higher_is_better = True

    def __init__(self, config: OfflineConfig, policy: DevicePolicy):
        self.config, self.device, self.policy = config, policy.device, policy
        self.data = load_dataset(config.dataset, config.env or None)
        self.env_id = config.env or self.data.env_id
        env = make_env(self.env_id)
        if not isinstance(env.action_space, gym.spaces.Box):
            raise RLError(f"{self.env_id} has a {type(env.action_space).__name__} action space; TD3+BC and A2PR "
                          "need continuous (Box) actions.")
        self.max_action = float(env.action_space.high[0])
        env.close()
        if config.normalize_states:
            self.state_mean, self.state_std = self.data.state_statistics()
        else:
            self.state_mean = np.zeros(self.data.obs_dim, np.float32)
            self.state_std = np.ones(self.data.obs_dim, np.float32)
        self.sampler = BatchSampler(self.data, self.device, self.state_mean, self.state_std)
        self.n_members = config.n_seeds
        self.updates = 0

    # -- the deterministic policy, for evaluation ------------------------------------------------
    def act(self, observations: torch.Tensor) -> torch.Tensor:  # (members, n, obs) -> (members, n, act)
        raise NotImplementedError

    def evaluation_seeds(self) -> list[int]:
        """Reset seeds of the evaluation episodes, member by member: member k is seed ``seed + k`` and
        its episodes start where a lone run of that seed would start them (the official code's
        ``seed + 100 + i``), not on the first member's start states."""
        cfg = self.config
        return member_evaluation_seeds(cfg.seed, self.n_members, cfg.eval_episodes, cfg.eval_seed_offset)

    def episode_returns(self) -> np.ndarray:
        """(members, episodes) undiscounted returns of the deterministic policy, all members stepped together."""
        cfg = self.config

        def policy(observations: np.ndarray) -> torch.Tensor:
            normalized = (observations - self.state_mean) / self.state_std
            return self.act(torch.as_tensor(normalized, dtype=torch.float32, device=self.device))

        return batched_episode_returns(self.env_id, policy, seed=cfg.seed, members=self.n_members,
                                       episodes=cfg.eval_episodes, offset=cfg.eval_seed_offset)

    def evaluate(self) -> dict[str, float]:
        returns = self.episode_returns().mean(1)
        scores = self.data.normalized_score(returns)
        metrics = {"normalized_score": float(scores.mean()), "return": float(returns.mean())}
        if self.n_members > 1:
            metrics |= {f"normalized_score/seed{self.config.seed + k}": float(s) for k, s in enumerate(scores)}
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------
    def modules(self) -> dict[str, Any]:
        """Everything with a state_dict: networks, targets and optimizers."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates} | {name: m.state_dict() for name, m in self.modules().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = state["updates"]
        for name, module in self.modules().items():
            module.load_state_dict(state[name])


def offline_inputs(config: OfflineConfig) -> dict[str, Any]:
    """The dataset file a run trains on; its checksum goes into the run's config.json."""
    return dataset_inputs(config.dataset)


def task_name(config: OfflineConfig) -> str:
    """Benchmark task label: the dataset name without path or version suffix."""
    name = config.dataset.removeprefix("minari:").removeprefix("d4rl:")
    name = name.rsplit("/", 1)[-1].removesuffix(".hdf5").removesuffix(".h5")
    return d4rl_task_name(name)
