"""Behaviour cloning: the control every offline RL claim is measured against.

A deterministic actor regressed onto the dataset's actions, nothing else: per gradient step and
member, minimize mean (π(s) − a)² over a uniform minibatch. Following CORL's
``algorithms/offline/any_percent_bc.py`` (tinkoff-ai/CORL): actor 2 × 256 ReLU with a tanh output
scaled by max_action (``Actor``), Adam 3e-4 (``actor_optimizer``), batch 256 (``TrainConfig.batch_size``),
states normalized with the dataset's mean and std + 1e-3 (``compute_mean_std``), evaluation every 5,000
steps on 10 episodes (``eval_freq``, ``n_episodes``).

Departures: CORL's "x% BC" keeps only the best fraction of trajectories (``keep_best_trajectories``,
``frac``); this is plain BC on every transition (CORL's ``frac = 1.0``), the control that tells
whether TD3+BC or A2PR learned anything beyond cloning. It shares TD3+BC's batched members, sampler
and evaluation (``rl/offline/common.py``), so its numbers are directly comparable.
"""

from __future__ import annotations

from typing import Any

import torch

from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.trainer import MethodSpec
from grp_workbench.rl.offline.common import OfflineAlgorithm, OfflineConfig, offline_inputs, task_name
from grp_workbench.rl.offline.td3bc import PRESETS, Actor  # the same budgets


class BC(OfflineAlgorithm):
    def __init__(self, config: OfflineConfig, policy: DevicePolicy):
        super().__init__(config, policy)
        self.actor = Actor(self.data.obs_dim, self.data.action_dim, config.hidden, config.actor_layers,
                           self.n_members, self.max_action).to(self.device)
        fused = self.device.type in ("cpu", "cuda")
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr, fused=fused)

    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.actor(observations)

    def modules(self) -> dict[str, Any]:
        return {"actor": self.actor, "actor_optimizer": self.actor_optimizer}

    def update(self) -> dict[str, float]:
        self.updates += 1
        states, actions, _, _, _ = self.sampler.sample(self.n_members, self.config.batch_size)
        per_member = (self.actor(states) - actions).pow(2).mean(dim=(1, 2))
        self.actor_optimizer.zero_grad(set_to_none=True)
        per_member.sum().backward()  # each member's own gradient, as if it trained alone
        self.actor_optimizer.step()
        return {"bc_mse": per_member.mean().item()}


SPEC = MethodSpec(name="bc", config_cls=OfflineConfig, presets=PRESETS, build=BC, task=task_name,
                  inputs=offline_inputs, precisions=("fp32",))
