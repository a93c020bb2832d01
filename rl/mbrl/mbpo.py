"""MBPO (Janner et al., NeurIPS 2019) with an ensemble, or with a single dynamics model and a
Lipschitz-regularized critic ("Is Model Ensemble Necessary?", Zheng et al., ICLR 2023).

One ``update`` is one environment step of every seed; the loop is MBPO's
(jannerm/mbpo, ``mbpo/algorithms/mbpo.py::_train``, lines 199-249):

1. the first ``initial_exploration_steps`` steps act uniformly at random and train nothing
   (softlearning's initial exploration hook; 5,000 for the MuJoCo configs);
2. every ``model_train_freq`` (250) steps after that: fit the dynamics model to every real
   transition so far (rl/mbrl/dynamics.py), set the rollout length k from the epoch (one epoch =
   ``epoch_length`` steps) by the linear schedule [min_epoch, max_epoch, min_len, max_len]
   (``_set_rollout_length``, lines 337-346), resize the model pool to
   retain_epochs · k · rollout_batch_size · epoch_length / model_train_freq (lines 351-373), and roll
   the current policy out k steps in the model from ``rollout_batch_size`` real start states,
   dropping rollouts that the environment's termination function ends (lines 381-403);
3. step the real environment with a sample of the policy;
4. G SAC updates (``n_train_repeat``), each on a batch of 5% real and 95% model transitions
   (``_training_batch``, lines 424-440), SAC as rl/common/sac.py.

Per-environment settings (G, target entropy, rollout schedule, epoch length, initial exploration)
are MBPO's ``examples/config/<env>/0.py``; termination functions are ``mbpo/static/<env>.py``.

Variants (``variant``): ``mbpo-ensemble`` (7 probabilistic models, 5 elites), ``single`` (one
model), ``single-sn`` (+ spectral-normalized critic), ``single-adv`` (+ adversarial state noise in
critic training), ``single-sn-adv`` (both). The regularizers' forms are ours (rl/mbrl/lipschitz.py:
the paper's code is not public).

Diagnostics at every evaluation: ``lipschitz_max`` / ``lipschitz_mean``, ‖∇_s Q_j(s, a)‖ over model
states and policy actions; ``value_aware_error``, the mean over the last ``model_train_freq`` real
transitions (which the model has not been trained on) of |V(s'_real) − mean_elites V(ŝ'_elite)|,
V(s) = min_j Q_j(s, μ(s)) with μ the policy's mean action and ŝ' each elite's mean prediction.

Departures: only ``terminated`` ends a stored transition (softlearning also stored time-limit ends
as terminal); Hopper's termination uses |s_i| < 100 where ``mbpo/static/hopper.py:13`` takes
``abs`` of the comparison (so no lower bound) — ours is the environment's own rule; evaluation uses
10 deterministic episodes where MBPO's configs use 1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from grp_workbench.envs import make_env
from grp_workbench.harness.config import TrainConfig
from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.trainer import MethodSpec
from grp_workbench.rl import RLError
from grp_workbench.rl.common.evaluation import batched_episode_returns
from grp_workbench.rl.common.sac import SAC, SACConfig
from grp_workbench.rl.mbrl.dynamics import DynamicsConfig, GaussianDynamics
from grp_workbench.rl.mbrl.lipschitz import (
    SN_LAYERS,
    adversarial_states,
    critic_gradient_norms,
    smoothness_penalty,
    spectral_mlp_factory,
)

# variant -> (dynamics members, elites, spectral norm, adversarial noise)
VARIANTS: dict[str, tuple[int, int, bool, bool]] = {
    "mbpo-ensemble": (7, 5, False, False),
    "single": (1, 1, False, False),
    "single-sn": (1, 1, True, False),
    "single-adv": (1, 1, False, True),
    "single-sn-adv": (1, 1, True, True),
}


def _hopper_done(next_obs: torch.Tensor) -> torch.Tensor:  # mbpo/static/hopper.py:9-16
    height, angle = next_obs[..., 0], next_obs[..., 1]
    healthy = (torch.isfinite(next_obs).all(-1) & (next_obs[..., 1:].abs() < 100).all(-1) & (height > 0.7)
               & (angle.abs() < 0.2))
    return ~healthy


def _walker_done(next_obs: torch.Tensor) -> torch.Tensor:  # mbpo/static/walker2d.py:9-14
    height, angle = next_obs[..., 0], next_obs[..., 1]
    return ~((height > 0.8) & (height < 2.0) & (angle > -1.0) & (angle < 1.0))


def _pendulum_done(next_obs: torch.Tensor) -> torch.Tensor:  # mbpo/static/inverted_pendulum.py:11-13
    return ~(torch.isfinite(next_obs).all(-1) & (next_obs[..., 1].abs() <= 0.2))


def _never_done(next_obs: torch.Tensor) -> torch.Tensor:  # mbpo/static/halfcheetah.py
    return torch.zeros(next_obs.shape[:-1], dtype=torch.bool, device=next_obs.device)


@dataclass(frozen=True)
class EnvSettings:
    """One row of MBPO's examples/config/<env>/0.py."""

    done: Callable[[torch.Tensor], torch.Tensor]
    updates_per_step: int  # n_train_repeat (G)
    target_entropy: float
    rollout_schedule: tuple[int, int, int, int]  # min_epoch, max_epoch, min_length, max_length
    epoch_length: int = 1000
    initial_exploration_steps: int = 5000


ENV_SETTINGS = {
    # ours, not MBPO's: the project's 2-d PointReach (never terminates), for tests and the demo
    "workbench/PointReach": EnvSettings(_never_done, 5, -2.0, (1, 5, 1, 3), 100, 100),
    "InvertedPendulum": EnvSettings(_pendulum_done, 10, -0.05, (1, 15, 1, 1), 250, 500),
    "Hopper": EnvSettings(_hopper_done, 20, -1.0, (20, 150, 1, 15)),
    "Walker2d": EnvSettings(_walker_done, 20, -3.0, (20, 150, 1, 1)),
    "HalfCheetah": EnvSettings(_never_done, 40, -3.0, (20, 150, 1, 1)),
}


def env_settings(env_id: str) -> EnvSettings:
    family = env_id.rsplit("-", 1)[0]
    if family not in ENV_SETTINGS:
        raise RLError(f"env={env_id!r}: MBPO here knows the termination rules and settings of "
                      f"{', '.join(f'{f}-v5' for f in ENV_SETTINGS if '/' not in f)} (mbpo/static/) and "
                      "workbench/PointReach-v0 only. Pick one of those.")
    return ENV_SETTINGS[family]


@dataclass
class MBPOConfig(TrainConfig):
    env: str = "Hopper-v5"
    variant: str = "mbpo-ensemble"  # one of VARIANTS
    n_seeds: int = 1  # seeds trained side by side as batched networks (seed, seed + 1, ...)
    # MBPO; 0 (or an empty schedule) takes the environment's row of ENV_SETTINGS
    updates_per_step: int = 0  # G, SAC updates per environment step
    target_entropy: float = 0.0  # 0: the environment's (MBPO's configs); the SAC default would be -|A|
    rollout_schedule: str = ""  # "min_epoch,max_epoch,min_length,max_length"
    epoch_length: int = 0
    initial_exploration_steps: int = 0
    model_train_freq: int = 250
    rollout_batch_size: int = 100_000
    model_retain_epochs: int = 1
    real_ratio: float = 0.05
    batch_size: int = 256
    hidden: int = 256
    lr: float = 3e-4
    initial_alpha: float = 1.0  # SAC's temperature at the start (softlearning: log alpha 0)
    discount: float = 0.99
    tau: float = 5e-3
    # the dynamics model (rl/mbrl/dynamics.py)
    model_hidden: int = 200
    model_batch_size: int = 256
    model_max_epochs: int = 0  # 0: until early stopping (official)
    # the Lipschitz regularizers (rl/mbrl/lipschitz.py); used by the variants that name them
    sn_layers: str = "hidden"  # which critic layers a -sn variant normalizes: hidden | all | penultimate
    adv_epsilon: float = 0.01  # l-inf radius, in standard deviations of each real state dimension
    adv_steps: int = 3  # projected sign-gradient steps
    adv_weight: float = 1.0  # weight of the smoothness penalty in the critic loss
    eval_episodes: int = 10
    eval_seed_offset: int = 100
    total_steps: int = 125_000  # environment steps (MBPO's Hopper curve runs to 125k)
    eval_every: int = 5000
    log_every: int = 1000
    checkpoint_every: int = 5000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise RLError(f"variant={self.variant!r} is not one of {', '.join(VARIANTS)}.")
        if self.sn_layers not in SN_LAYERS:
            raise RLError(f"sn_layers={self.sn_layers!r} is not one of {', '.join(SN_LAYERS)}.")
        env_settings(self.env)
        if not 0 < self.real_ratio <= 1 or self.n_seeds < 1 or self.model_train_freq < 1:
            raise RLError(f"real_ratio={self.real_ratio} must lie in (0, 1], n_seeds={self.n_seeds} and "
                          f"model_train_freq={self.model_train_freq} must be >= 1.")
        if self.rollout_schedule and len(self.rollout_schedule.split(",")) != 4:
            raise RLError(f"rollout_schedule={self.rollout_schedule!r}: give min_epoch,max_epoch,min_length,"
                          "max_length (e.g. 20,150,1,15).")
        if self.initial_alpha <= 0:
            raise RLError(f"initial_alpha={self.initial_alpha} must be > 0 (it is exp(log alpha)).")
        if self.adv_epsilon < 0 or self.adv_steps < 0:
            raise RLError(f"adv_epsilon={self.adv_epsilon} and adv_steps={self.adv_steps} must be >= 0.")

    def settings(self) -> EnvSettings:
        """The environment's MBPO settings with this config's overrides."""
        base = env_settings(self.env)
        schedule = (tuple(int(x) for x in self.rollout_schedule.split(",")) if self.rollout_schedule
                    else base.rollout_schedule)
        return EnvSettings(base.done, self.updates_per_step or base.updates_per_step,
                           self.target_entropy or base.target_entropy, schedule,  # type: ignore[arg-type]
                           self.epoch_length or base.epoch_length,
                           self.initial_exploration_steps or base.initial_exploration_steps)


def rollout_length(epoch: int, schedule: tuple[int, int, int, int]) -> int:
    """MBPO's k: min_length up to min_epoch, then linear to max_length at max_epoch (truncated to int)."""
    min_epoch, max_epoch, min_length, max_length = schedule
    if epoch <= min_epoch:
        return min_length
    progress = min((epoch - min_epoch) / (max_epoch - min_epoch), 1.0)
    return int(progress * (max_length - min_length) + min_length)


class TransitionPool:
    """Per-seed FIFO replay of (s, a, r, s', terminated) on the device; seeds fill at their own pace."""

    FIELDS = ("states", "actions", "rewards", "next_states", "dones")

    def __init__(self, groups: int, capacity: int, obs_dim: int, action_dim: int, device: torch.device):
        dims = (obs_dim, action_dim, 1, obs_dim, 1)
        self.data = {name: torch.zeros(groups, capacity, d, device=device) for name, d in zip(self.FIELDS, dims)}
        self.capacity, self.groups = capacity, groups
        self.pointer = [0] * groups
        self.size = [0] * groups

    def add(self, group: int, batch: dict[str, torch.Tensor]) -> None:
        n = len(batch["states"])
        if n > self.capacity:
            batch, n = {k: v[-self.capacity:] for k, v in batch.items()}, self.capacity
        index = (self.pointer[group] + torch.arange(n, device=batch["states"].device)) % self.capacity
        for name in self.FIELDS:
            self.data[name][group, index] = batch[name]
        self.pointer[group] = (self.pointer[group] + n) % self.capacity
        self.size[group] = min(self.size[group] + n, self.capacity)

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        device = self.data["states"].device
        sizes = torch.tensor(self.size, device=device, dtype=torch.float64)
        index = (torch.rand(self.groups, n, generator=generator, device=device, dtype=torch.float64)
                 * sizes[:, None]).long()
        rows = torch.arange(self.groups, device=device)[:, None]
        return {name: x[rows, index] for name, x in self.data.items()}

    def ordered(self, group: int) -> dict[str, torch.Tensor]:
        """Group ``group``'s transitions, oldest first."""
        start = self.pointer[group] if self.size[group] == self.capacity else 0
        index = (start + torch.arange(self.size[group], device=self.data["states"].device)) % self.capacity
        return {name: x[group, index] for name, x in self.data.items()}

    def resized(self, capacity: int) -> TransitionPool:
        """A pool of ``capacity`` holding the most recent transitions (MBPO's _reallocate_model_pool)."""
        obs_dim, action_dim = self.data["states"].shape[-1], self.data["actions"].shape[-1]
        pool = TransitionPool(self.groups, capacity, obs_dim, action_dim, self.data["states"].device)
        for group in range(self.groups):
            pool.add(group, self.ordered(group))
        return pool

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "pointer": list(self.pointer), "size": list(self.size),
                "data": {k: v.clone() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity, self.pointer, self.size = state["capacity"], list(state["pointer"]), list(state["size"])
        self.data = {k: v.to(self.data["states"].device) for k, v in state["data"].items()}


class MBPO:
    main_metric = "return"
    higher_is_better = True
    bar_metrics = ("train_return", "critic_loss")

    def __init__(self, config: MBPOConfig, policy: DevicePolicy):
        self.config, self.device = config, policy.device
        self.settings = config.settings()
        members, elites, self.spectral, self.adversarial = VARIANTS[config.variant]
        self.n_members = config.n_seeds
        self.envs = [make_env(config.env) for _ in range(self.n_members)]
        space = self.envs[0].action_space
        if not isinstance(space, gym.spaces.Box) or not np.allclose(space.high, -space.low) or \
                not np.allclose(space.high, space.high[0]):
            raise RLError(f"{config.env}: MBPO's SAC here needs a symmetric Box action space (got {space}).")
        self.max_action = float(space.high[0])
        self.obs_dim, self.action_dim = self.envs[0].observation_space.shape[0], space.shape[0]
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        sac_config = SACConfig(hidden=config.hidden, actor_lr=config.lr, critic_lr=config.lr, alpha_lr=config.lr,
                               discount=config.discount, tau=config.tau,
                               initial_log_alpha=math.log(config.initial_alpha),
                               target_entropy=self.settings.target_entropy)
        critic_mlp = spectral_mlp_factory(config.sn_layers if self.spectral else "none")
        self.agent = SAC(self.obs_dim, self.action_dim, self.max_action, self.n_members, sac_config, self.device,
                         critic_mlp=critic_mlp)
        self.model = GaussianDynamics(self.obs_dim, self.action_dim,
                                      DynamicsConfig(members=members, elites=elites, hidden=config.model_hidden,
                                                     batch_size=config.model_batch_size,
                                                     max_epochs=config.model_max_epochs or None),
                                      n_groups=self.n_members).to(self.device)
        self.real = TransitionPool(self.n_members, config.total_steps, self.obs_dim, self.action_dim, self.device)
        self.model_pool = TransitionPool(self.n_members, 1, self.obs_dim, self.action_dim, self.device)
        self.env_steps = self.sac_updates = 0
        self.sac_seconds = self.model_seconds = 0.0
        self.noise_radius: torch.Tensor | None = None  # set at each model fit (the adversarial noise's unit)
        self.observations = np.stack([env.reset(seed=config.seed + k)[0] for k, env in enumerate(self.envs)])
        for k, env in enumerate(self.envs):
            env.action_space.seed(config.seed + k)
        self.episode_return = np.zeros(self.n_members)

    # -- one environment step (the trainer's unit) ------------------------------------------------
    def update(self) -> dict[str, float]:
        cfg, s = self.config, self.settings
        after_exploration = self.env_steps - s.initial_exploration_steps
        metrics: dict[str, float] = {}
        if after_exploration >= 0 and after_exploration % cfg.model_train_freq == 0 and cfg.real_ratio < 1:
            metrics |= self.train_model_and_roll_out(epoch=after_exploration // s.epoch_length)
        metrics |= self.step_environments(explore=after_exploration < 0)
        if after_exploration >= 0:
            start = time.perf_counter()
            for _ in range(s.updates_per_step):
                batch = self.training_batch()
                metrics |= self.agent.update(**batch, critic_penalty=self.penalty(batch))
            self.sac_seconds += time.perf_counter() - start
            self.sac_updates += s.updates_per_step
        return metrics | {"steps": 1}

    def step_environments(self, explore: bool) -> dict[str, float]:
        """One step of every seed's environment; returns the mean return of the training episodes that
        ended on it (the trainer averages it over the updates that report it)."""
        if explore:  # uniform actions, drawn from the run's generator so that a resume repeats them
            actions = (torch.rand(self.n_members, self.action_dim, generator=self.generator, device=self.device) * 2
                       - 1) * self.max_action
        else:
            states = torch.as_tensor(self.observations, dtype=torch.float32, device=self.device)
            actions = self.agent.act(states.unsqueeze(1)).squeeze(1)
        actions_np = actions.cpu().numpy()
        finished = []
        for k, env in enumerate(self.envs):
            next_obs, reward, terminated, truncated, _ = env.step(actions_np[k])
            self.real.add(k, {name: torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device).reshape(1, -1)
                              for name, x in zip(TransitionPool.FIELDS, (self.observations[k], actions_np[k], reward,
                                                                         next_obs, float(terminated)))})
            self.episode_return[k] += reward
            if terminated or truncated:
                finished.append(float(self.episode_return[k]))
                self.episode_return[k] = 0.0
                next_obs, _ = env.reset()
            self.observations[k] = next_obs
        self.env_steps += 1
        return {"train_return": float(np.mean(finished))} if finished else {}

    # -- the model --------------------------------------------------------------------------------
    def train_model_and_roll_out(self, epoch: int) -> dict[str, float]:
        cfg, s = self.config, self.settings
        start = time.perf_counter()
        data = [self.real.ordered(k) for k in range(self.n_members)]
        inputs = torch.stack([torch.cat([d["states"], d["actions"]], -1) for d in data])
        targets = torch.stack([torch.cat([d["rewards"], d["next_states"] - d["states"]], -1) for d in data])
        fit = self.model.fit(inputs, targets, self.generator)
        self.model_seconds += time.perf_counter() - start
        self.noise_radius = cfg.adv_epsilon * self.state_std()

        length = rollout_length(epoch, s.rollout_schedule)
        capacity = int(cfg.model_retain_epochs * length * cfg.rollout_batch_size * s.epoch_length
                       / cfg.model_train_freq)
        if capacity != self.model_pool.capacity:
            self.model_pool = self.model_pool.resized(capacity)
        states = self.real.sample(cfg.rollout_batch_size, self.generator)["states"]
        alive = torch.ones(states.shape[:2], dtype=torch.bool, device=self.device)
        added = 0
        for _ in range(length):
            actions = self.agent.act(states)
            next_states, rewards = self.model.step(states, actions, self.generator)
            dones = s.done(next_states)
            for k in range(self.n_members):
                keep = alive[k]
                self.model_pool.add(k, {"states": states[k, keep], "actions": actions[k, keep],
                                        "rewards": rewards[k, keep], "next_states": next_states[k, keep],
                                        "dones": dones[k, keep].float().unsqueeze(-1)})
                added += int(keep.sum())
            alive &= ~dones
            if not alive.any():
                break
            states = next_states
        return {**fit, "rollout_length": float(length),
                "mean_rollout_length": added / (self.n_members * cfg.rollout_batch_size)}

    def training_batch(self) -> dict[str, torch.Tensor]:
        """(members, batch, ·): 5% real transitions then 95% model transitions (MBPO's _training_batch)."""
        cfg = self.config
        n_real = int(cfg.batch_size * cfg.real_ratio)
        real = self.real.sample(n_real, self.generator)
        if n_real == cfg.batch_size:
            batch = real
        else:
            fake = self.model_pool.sample(cfg.batch_size - n_real, self.generator)
            batch = {k: torch.cat([real[k], fake[k]], 1) for k in real}
        return {"states": batch["states"], "actions": batch["actions"], "rewards": batch["rewards"],
                "next_states": batch["next_states"], "not_dones": 1 - batch["dones"]}

    def penalty(self, batch: dict[str, torch.Tensor]):
        """The adversarial-noise term on the batch's model-generated transitions, for the variants
        that use it (else None)."""
        cfg = self.config
        if not self.adversarial or cfg.adv_weight == 0 or cfg.real_ratio == 1:
            return None
        n_real = int(cfg.batch_size * cfg.real_ratio)
        states, actions = batch["states"][:, n_real:], batch["actions"][:, n_real:]

        def critic_penalty(critic):
            delta = adversarial_states(critic, states, actions, self.noise_radius, cfg.adv_steps, self.generator)
            per_member = smoothness_penalty(critic, states, actions, delta).sum(0)
            return cfg.adv_weight * per_member.sum(), {"adv_penalty": per_member.mean().item()}

        return critic_penalty

    def state_std(self) -> torch.Tensor:
        """(members, 1, obs): each seed's per-dimension std of its real states (the noise's unit)."""
        std = torch.stack([self.real.ordered(k)["states"].std(0, unbiased=False) for k in range(self.n_members)])
        return std.clamp_min(1e-6).unsqueeze(1)

    # -- evaluation and diagnostics ---------------------------------------------------------------
    @torch.no_grad()
    def episode_returns(self) -> np.ndarray:
        """(members, episodes) returns of the deterministic policy; member k's episodes start where a
        lone run of seed + k would start them."""
        cfg = self.config

        def policy(observations: np.ndarray) -> torch.Tensor:
            states = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
            return self.agent.act(states, deterministic=True)

        return batched_episode_returns(cfg.env, policy, seed=cfg.seed, members=self.n_members,
                                       episodes=cfg.eval_episodes, offset=cfg.eval_seed_offset)

    def diagnostics(self, n_states: int = 1024) -> dict[str, np.ndarray]:
        """Per member: the critic's empirical Lipschitz constant on model states and the value-aware
        model error on the real transitions the model has not trained on (module docstring)."""
        if self.model_pool.size[0] == 0 or self.env_steps <= self.settings.initial_exploration_steps:
            return {}
        generator = torch.Generator(device=self.device).manual_seed(0)  # leaves training's stream alone
        states = self.model_pool.sample(n_states, generator)["states"]
        with torch.no_grad():
            actions = self.agent.act(states)
        norms = critic_gradient_norms(self.agent.critic, states, actions)  # (twins, members, B)
        recent = min(self.config.model_train_freq, min(self.real.size))
        fresh = [self.real.ordered(k) for k in range(self.n_members)]
        s, a, s_next = (torch.stack([d[name][-recent:] for d in fresh]) for name in ("states", "actions",
                                                                                       "next_states"))

        def value(x: torch.Tensor) -> torch.Tensor:
            return self.agent.critic(x, self.agent.act(x, deterministic=True)).min(0).values.squeeze(-1)

        with torch.no_grad():
            predicted = self.model.predict_mean(s, a)  # (members, elites, B, obs)
            model_value = torch.stack([value(predicted[:, e]) for e in range(predicted.shape[1])]).mean(0)
            error = (value(s_next) - model_value).abs().mean(1)
        return {"lipschitz_max": norms.amax(dim=(0, 2)).cpu().numpy(),
                "lipschitz_mean": norms.mean(dim=(0, 2)).cpu().numpy(), "value_aware_error": error.cpu().numpy()}

    def evaluate(self) -> dict[str, float]:
        """Means over members, and each member's value under ``<metric>/seed<k>`` when there are several."""
        per_member = {"return": self.episode_returns().mean(1)} | self.diagnostics()
        metrics = {"model_train_s": self.model_seconds,
                   "updates_per_s": self.sac_updates * self.n_members / self.sac_seconds if self.sac_seconds else 0.0}
        for name, values in per_member.items():
            metrics[name] = float(values.mean())
            if self.n_members > 1:
                metrics |= {f"{name}/seed{self.config.seed + k}": float(v) for k, v in enumerate(values)}
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------
    def env_state(self) -> list[dict[str, Any]]:
        """What continues each training episode exactly: the simulator's state (MuJoCo's qpos, qvel
        and time, or the environment's own ``snapshot``), the time limit's counter and the
        environment's generator."""
        states = []
        for env in self.envs:
            inner = env.unwrapped
            if hasattr(inner, "snapshot"):
                state = {"snapshot": inner.snapshot()}
            else:
                state = {"qpos": inner.data.qpos.copy(), "qvel": inner.data.qvel.copy(), "time": float(inner.data.time),
                         "np_random": inner.np_random.bit_generator.state}
            states.append(state | {"elapsed": _time_limit(env)._elapsed_steps})
        return states

    def load_env_state(self, states: list[dict[str, Any]]) -> None:
        for env, state in zip(self.envs, states):
            inner = env.unwrapped
            if "snapshot" in state:
                inner.restore(state["snapshot"])
            else:
                inner.set_state(state["qpos"], state["qvel"])
                inner.data.time = state["time"]
                inner.np_random.bit_generator.state = state["np_random"]
            _time_limit(env)._elapsed_steps = state["elapsed"]

    def state_dict(self) -> dict[str, Any]:
        return {"agent": self.agent.state_dict(), "model": self.model.state_dict(),
                "model_optimizer": self.model.optimizer.state_dict(), "real": self.real.state_dict(),
                "model_pool": self.model_pool.state_dict(), "generator": self.generator.get_state(),
                "env_steps": self.env_steps, "sac_updates": self.sac_updates, "sac_seconds": self.sac_seconds,
                "model_seconds": self.model_seconds, "noise_radius": self.noise_radius,
                "observations": self.observations.copy(), "episode_return": self.episode_return.copy(),
                "envs": self.env_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.model.load_state_dict(state["model"])
        self.model.optimizer.load_state_dict(state["model_optimizer"])
        self.real.load_state_dict(state["real"])
        self.model_pool.load_state_dict(state["model_pool"])
        self.generator.set_state(state["generator"])
        self.env_steps, self.sac_updates = state["env_steps"], state["sac_updates"]
        self.sac_seconds, self.model_seconds = state["sac_seconds"], state["model_seconds"]
        self.noise_radius = state["noise_radius"]
        self.observations, self.episode_return = state["observations"].copy(), state["episode_return"].copy()
        self.load_env_state(state["envs"])


def _time_limit(env: gym.Env) -> gym.wrappers.TimeLimit:
    while not isinstance(env, gym.wrappers.TimeLimit):
        if not hasattr(env, "env"):
            raise RLError(f"{env} has no TimeLimit wrapper: MBPO's checkpoints need its step counter.")
        env = env.env
    return env


def task_name(env: str, total_steps: int) -> str:
    """``Hopper-15k``: the environment's family and the environment steps."""
    family = env.rsplit("-", 1)[0].removeprefix("workbench/")
    return f"{family}-{total_steps // 1000}k" if total_steps >= 1000 else f"{family}-{total_steps}"


def _task(config: MBPOConfig) -> str:
    return task_name(config.env, config.total_steps)


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},  # MBPO's settings for the environment (ENV_SETTINGS), 125k steps
    # a CPU budget: 10k rollout starts per retrain instead of 100k, model fits capped at 20 epochs
    "quick": {"total_steps": 20_000, "rollout_batch_size": 10_000, "model_max_epochs": 20, "eval_every": 2000,
              "checkpoint_every": 2000, "log_every": 500},
    "tiny": {"env": "workbench/PointReach-v0", "total_steps": 300, "model_train_freq": 50, "rollout_batch_size": 64,
             "updates_per_step": 1, "model_max_epochs": 20, "model_batch_size": 32, "batch_size": 32, "hidden": 32,
             "model_hidden": 32, "initial_alpha": 0.05, "lr": 1e-3,
             "eval_episodes": 2, "eval_every": 150, "checkpoint_every": 100, "log_every": 50},
}

SPEC = MethodSpec(name="mbpo", config_cls=MBPOConfig, presets=PRESETS, build=MBPO, task=_task,
                  precisions=("fp32",), variant=lambda config: config.variant)
