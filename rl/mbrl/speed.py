"""Side-by-side speed measurements for the MBRL benchmark: SAC updates per second of ours against
stable-baselines3's SAC on the same shapes, and the dynamics-model fit time of the 7-model ensemble
against the single model. Each pair runs interleaved in one process, so that the machine's load
affects both sides alike; the ratio is the result, not the absolute numbers."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from grp_workbench.rl.common.sac import SAC, SACConfig
from grp_workbench.rl.mbrl.dynamics import DynamicsConfig, GaussianDynamics

HOPPER_SHAPES = {"obs_dim": 11, "action_dim": 3, "batch_size": 256, "hidden": 256}


def sac_updates_per_s(members: int = 1, updates: int = 200, repeats: int = 5, buffer: int = 10_000,
                      seed: int = 0) -> dict[str, float]:
    """Median member-updates per second of ours (``members`` seeds as one network) and of SB3's SAC
    (one seed; its rate is per seed already), both sampling batch 256 from a replay buffer of random
    Hopper-shaped transitions, two 256-unit layers, CPU."""
    from stable_baselines3 import SAC as SB3SAC

    from grp_workbench.envs import make_env

    obs_dim, action_dim, batch, hidden = (HOPPER_SHAPES[k] for k in ("obs_dim", "action_dim", "batch_size", "hidden"))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = make_env("Hopper-v5")  # SB3 reads its spaces (11-d states, 3-d actions) and resets it once
    sb3 = SB3SAC("MlpPolicy", env, batch_size=batch, learning_starts=0, buffer_size=buffer, device="cpu",
                 policy_kwargs={"net_arch": [hidden, hidden]}, seed=seed, verbose=0)
    for _ in range(buffer):
        obs = rng.standard_normal((1, obs_dim)).astype(np.float32)
        sb3.replay_buffer.add(obs, rng.standard_normal((1, obs_dim)).astype(np.float32),
                              rng.uniform(-1, 1, (1, action_dim)).astype(np.float32), rng.standard_normal(1),
                              np.zeros(1), [{}])
    sb3._setup_learn(total_timesteps=1)
    ours = SAC(obs_dim, action_dim, 1.0, members, SACConfig(hidden=hidden), torch.device("cpu"))
    data = [torch.randn(buffer, d) for d in (obs_dim, action_dim, 1, obs_dim)] + [torch.ones(buffer, 1)]

    def run_ours(n: int) -> None:
        for _ in range(n):
            index = torch.randint(buffer, (members, batch))
            ours.update(*(x[index] for x in data))

    run_ours(10)
    sb3.train(gradient_steps=10, batch_size=batch)
    rates: dict[str, list[float]] = {"sac": [], "sb3-sac": []}
    for _ in range(repeats):
        start = time.perf_counter()
        sb3.train(gradient_steps=updates, batch_size=batch)
        rates["sb3-sac"].append(updates / (time.perf_counter() - start))
        start = time.perf_counter()
        run_ours(updates)
        rates["sac"].append(updates * members / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def model_fit_seconds(transitions: int = 5000, repeats: int = 3, epochs: int = 10, seed: int = 0) -> dict[str, float]:
    """Median seconds of ``epochs`` training epochs of MBPO's model on ``transitions`` Hopper-shaped
    transitions: the 7-member ensemble and the single model, interleaved."""
    obs_dim, action_dim = HOPPER_SHAPES["obs_dim"], HOPPER_SHAPES["action_dim"]
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(1, transitions, obs_dim + action_dim, generator=g)
    targets = torch.randn(1, transitions, obs_dim + 1, generator=g)
    seconds: dict[str, list[float]] = {"ensemble": [], "single": []}
    for _ in range(repeats):
        for name, (members, elites) in {"ensemble": (7, 5), "single": (1, 1)}.items():
            model = GaussianDynamics(obs_dim, action_dim, DynamicsConfig(members=members, elites=elites,
                                                                         max_epochs=epochs,
                                                                         max_epochs_since_update=epochs))
            start = time.perf_counter()
            model.fit(inputs, targets, torch.Generator().manual_seed(seed))
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in seconds.items()}
