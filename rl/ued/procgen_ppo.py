"""PPO with PLR level sampling on Procgen, through the ``workbench/Procgen-v0`` adapter.

The setting of Prioritized Level Replay (Jiang et al. 2021; facebookresearch/level-replay,
``level_replay/arguments.py``; ../shared/references/dred.md section 9): a fixed set of training
levels (seeds ``0 .. num_train_levels-1``, easy mode), the IMPALA ResNet (channels 16/32/32, a
256-unit layer), PPO with 64 environments x 256 steps, 3 epochs of 8 minibatches, lr 5e-4,
gamma 0.999, GAE 0.95, entropy 0.01, clip 0.2, 25M steps; PLR scores levels by value_l1 and samples
by rank (temperature 0.1) mixed with staleness (0.1), after playing every level once (rho 1.0).
The ``paper`` preset is that run (GPU scale); ``quick`` is a CPU run of a few minutes that shows
the sampler at work; ``tiny`` is for tests. Every level a rollout played is scored as on
CaveEscape (``rl.ued.ppo.score_levels``), and each environment plays the level the sampler
chose (``reset(options={"level": seed})``).

Evaluation: mean return and solved rate (return > 0) over one episode on each of the first
``eval_levels`` training levels and on as many unseen levels (seeds from ``test_start_level``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from grp_workbench.harness.config import TrainConfig
from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.trainer import MethodSpec
from grp_workbench.rl import RLError
from grp_workbench.rl.ued.ppo import compute_gae, ppo_step, score_levels
from grp_workbench.rl.ued.samplers import PLRConfig, PLRSampler, UniformSampler

SAMPLERS = ("plr", "uniform")


@dataclass
class ProcgenConfig(TrainConfig):
    env_name: str = "maze"
    distribution_mode: str = "easy"
    num_train_levels: int = 200  # training seeds 0 .. N-1
    test_start_level: int = 100_000  # unseen evaluation seeds start here
    eval_levels: int = 100  # episodes per evaluation set (train, test)
    num_envs: int = 64
    num_steps: int = 256
    lr: float = 5e-4
    adam_eps: float = 1e-5
    gamma: float = 0.999
    gae_lambda: float = 0.95
    clip: float = 0.2
    ppo_epochs: int = 3
    num_minibatches: int = 8
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    max_grad_norm: float = 0.5
    plr_temperature: float = 0.1
    staleness_coef: float = 0.1
    unseen_until: float = 1.0  # level-replay's rho: every training level is played once before replay
    total_steps: int = 25_000_000
    eval_every: int = 1_000_000
    log_every: int = 16_384
    checkpoint_every: int = 1_000_000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_train_levels <= 0 or self.num_envs <= 0 or self.num_steps <= 0:
            raise RLError(f"num_train_levels={self.num_train_levels}, num_envs={self.num_envs} and "
                          f"num_steps={self.num_steps} must be positive.")
        if self.test_start_level < self.num_train_levels:
            raise RLError(f"test_start_level={self.test_start_level} overlaps the training seeds "
                          f"0..{self.num_train_levels - 1}; use a seed at or above {self.num_train_levels}.")


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ImpalaActorCritic(nn.Module):
    """The IMPALA ResNet of procgen's baselines: per stage conv 3x3, max-pool 3x3/2, two residual blocks."""

    def __init__(self, n_actions: int = 15, channels: tuple[int, ...] = (16, 32, 32), hidden: int = 256):
        super().__init__()
        layers, previous = [], 3
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1),
                       ResidualBlock(width), ResidualBlock(width)]
            previous = width
        self.trunk = nn.Sequential(*layers, nn.ReLU(), nn.Flatten(), nn.Linear(previous * 8 * 8, hidden), nn.ReLU())
        self.actor = nn.Linear(hidden, n_actions)
        self.critic = nn.Linear(hidden, 1)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(frames.permute(0, 3, 1, 2).float() / 255.0)
        return self.actor(h), self.critic(h).squeeze(-1)


class ProcgenPLRTraining:
    main_metric = "test/return"
    higher_is_better = True

    def __init__(self, config: ProcgenConfig, policy: DevicePolicy, sampler: str = "plr"):
        from grp_workbench.envs.procgen_env import ProcgenLevelEnv

        if sampler not in SAMPLERS:
            raise RLError(f"sampler {sampler!r} is not one of {', '.join(SAMPLERS)}.")
        self.config = cfg = config
        self.device = policy.device
        seeds = list(range(cfg.num_train_levels))
        plr = PLRConfig(cfg.plr_temperature, cfg.staleness_coef, cfg.unseen_until)
        self.sampler = PLRSampler(seeds, plr, cfg.seed) if sampler == "plr" else UniformSampler(seeds, cfg.seed)
        self.envs = [ProcgenLevelEnv(cfg.env_name, distribution_mode=cfg.distribution_mode)
                     for _ in range(cfg.num_envs)]
        self.net = ImpalaActorCritic(n_actions=self.envs[0].action_space.n).to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.steps_done = 0
        self.plays = np.zeros(cfg.num_train_levels, dtype=np.int64)  # episodes started per training level
        self._frames: np.ndarray | None = None
        self._level_ids: list[int] = []

    def _episode_seed(self) -> int:
        return int(torch.randint(2**31 - 1, (1,), generator=self.generator))

    def _start_episode(self, i: int) -> np.ndarray:
        level_id = self.sampler.sample(1)[0]
        self._level_ids[i] = level_id
        self.plays[level_id] += 1
        return self.envs[i].reset(seed=self._episode_seed(), options={"level": self.sampler.level(level_id)})[0]

    def update(self) -> dict[str, float]:
        cfg = self.config
        if self._frames is None:
            self._level_ids = [0] * cfg.num_envs
            self._frames = np.stack([self._start_episode(i) for i in range(cfg.num_envs)])
        rollout = self._collect()
        metrics = self._ppo(rollout)
        self.steps_done += cfg.num_envs * cfg.num_steps
        weights = self.sampler.weights() if isinstance(self.sampler, PLRSampler) else None
        if weights is not None:  # how peaked PLR's replay distribution is (uniform: log N)
            metrics["sampler_entropy"] = float(-(weights * np.log(weights + 1e-12)).sum())
        return metrics | {"episode_return": rollout["episode_return"], "steps": cfg.num_envs * cfg.num_steps,
                          "levels_played": float((self.plays > 0).sum())}

    def _collect(self) -> dict[str, Any]:
        cfg = self.config
        n, t_max = cfg.num_envs, cfg.num_steps
        frames = torch.zeros(t_max, n, 64, 64, 3, dtype=torch.uint8)
        actions = torch.zeros(t_max, n, dtype=torch.long)
        log_probs, values, rewards, dones = (torch.zeros(t_max, n) for _ in range(4))
        level_of_step = np.zeros((t_max, n), dtype=np.int64)
        finished, running = [], np.zeros(n)
        for t in range(t_max):
            frame = torch.as_tensor(self._frames)
            with torch.no_grad():
                logits, value = self.net(frame.to(self.device))
            dist = torch.distributions.Categorical(logits=logits.cpu())
            action = dist.sample()
            frames[t], actions[t], log_probs[t], values[t] = frame, action, dist.log_prob(action), value.cpu()
            level_of_step[t] = self._level_ids
            for i, env in enumerate(self.envs):
                observation, reward, terminated, truncated, _ = env.step(int(action[i]))
                rewards[t, i] = reward
                running[i] += reward
                if terminated or truncated:
                    dones[t, i] = 1.0
                    finished.append((self._level_ids[i], running[i]))
                    running[i] = 0.0
                    observation = self._start_episode(i)
                self._frames[i] = observation
        with torch.no_grad():
            _, last_value = self.net(torch.as_tensor(self._frames).to(self.device))
        advantages = compute_gae(rewards, values, dones, last_value.cpu(), cfg.gamma, cfg.gae_lambda)
        score_levels(self.sampler, level_of_step, advantages, finished)
        return {"frames": frames, "actions": actions, "log_probs": log_probs, "values": values,
                "advantages": advantages, "returns": advantages + values,
                "episode_return": float(np.mean([r for _, r in finished])) if finished else float("nan")}

    def _ppo(self, rollout: dict[str, Any]) -> dict[str, float]:
        cfg = self.config
        flat = {k: rollout[k].flatten(0, 1) for k in ("frames", "actions", "log_probs", "values", "advantages",
                                                      "returns")}
        stats, count = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0}, 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(cfg.num_envs * cfg.num_steps, generator=self.generator)
            for batch in order.chunk(cfg.num_minibatches):
                data = {k: v[batch].to(self.device) for k, v in flat.items()}
                logits, value = self.net(data["frames"])
                for name, number in ppo_step(self.optimizer, self.net.parameters(), logits, value, data, cfg).items():
                    stats[name] += number
                count += 1
        return {k: v / count for k, v in stats.items()}

    def _play(self, seeds: list[int]) -> np.ndarray:
        """One stochastic-policy episode per seed, in batches of num_envs environments."""
        returns = []
        for start in range(0, len(seeds), len(self.envs)):
            batch = seeds[start : start + len(self.envs)]
            frames = np.stack([env.reset(seed=self._episode_seed(), options={"level": seed})[0]
                               for env, seed in zip(self.envs, batch)])
            total, active = np.zeros(len(batch)), np.ones(len(batch), dtype=bool)
            while active.any():
                with torch.no_grad():
                    logits, _ = self.net(torch.as_tensor(frames).to(self.device))
                actions = torch.distributions.Categorical(logits=logits.cpu()).sample().tolist()
                for i in np.flatnonzero(active):
                    frames[i], reward, terminated, truncated, _ = self.envs[i].step(actions[i])
                    total[i] += reward
                    active[i] = not (terminated or truncated)
            returns.extend(total.tolist())
        return np.array(returns)

    def evaluate(self) -> dict[str, float]:
        cfg = self.config
        metrics = {}
        for name, first in (("train", 0), ("test", cfg.test_start_level)):
            count = min(cfg.eval_levels, cfg.num_train_levels) if name == "train" else cfg.eval_levels
            returns = self._play(list(range(first, first + count)))
            metrics[f"{name}/return"] = float(returns.mean())
            metrics[f"{name}/solved_rate"] = float((returns > 0).mean())
        self._frames = None  # evaluation used the training environments: restart the rollout episodes
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "steps_done": self.steps_done, "plays": self.plays,
                "sampler": self.sampler.__dict__.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.steps_done, self.plays = state["steps_done"], state["plays"]
        self.sampler.__dict__.update(state["sampler"])
        self._frames = None


def _task(config: ProcgenConfig) -> str:
    return f"procgen-{config.env_name}-{config.distribution_mode}"


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # minutes on a CPU: enough for PLR's scores and replay counts to separate the levels
    "quick": {"num_envs": 16, "num_steps": 128, "num_minibatches": 4, "num_train_levels": 50,
              "total_steps": 32_768, "eval_every": 16_384, "checkpoint_every": 4_096, "log_every": 2_048,
              "eval_levels": 32},
    "tiny": {"num_envs": 2, "num_steps": 16, "num_minibatches": 2, "ppo_epochs": 1, "num_train_levels": 5,
             "total_steps": 64, "eval_every": 64, "checkpoint_every": 64, "log_every": 32, "eval_levels": 2},
}
SPECS = {f"procgen-{name}": MethodSpec(name=f"procgen-{name}", config_cls=ProcgenConfig, presets=PRESETS,
                                       build=functools.partial(ProcgenPLRTraining, sampler=name), task=_task)
         for name in SAMPLERS}
