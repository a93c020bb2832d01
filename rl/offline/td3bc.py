"""TD3+BC (Fujimoto & Gu, "A Minimalist Approach to Offline Reinforcement Learning", NeurIPS 2021).

Per gradient step, for every member (seed) at once:

1. critic: y = r + γ·(1 − done)·min_j Q'_j(s', clip(π'(s') + clip(N(0, σ), ±c), ±max_a));
   minimize Σ_j (Q_j(s, a) − y)²;
2. every ``policy_freq`` steps, actor: maximize λ·Q_1(s, π(s)) − (π(s) − a)² with
   λ = α / mean|Q_1(s, π(s))| (detached), then Polyak-average both targets with τ.

Defaults are the paper's: α 2.5, σ 0.2, c 0.5, policy delay 2, τ 0.005, γ 0.99, Adam 3e-4, batch
256, 2 × 256 ReLU networks, states normalized with the dataset's mean and std.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.trainer import MethodSpec
from grp_workbench.rl.common.networks import TwinQ, VectorizedLinear, soft_update, vectorized_mlp
from grp_workbench.rl.offline.common import OfflineAlgorithm, OfflineConfig, offline_inputs, task_name


class TwinCritic(TwinQ):
    """SAC's twin critic (rl/common/networks.py) with a first-head-only evaluation for the actor step."""

    def q1(self, states: torch.Tensor, actions: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """The first head only (half the work of both). ``frozen``: gradients reach the inputs but not
        the critic's weights, which the actor step never updates anyway."""
        x = torch.cat([states, actions], -1)
        for layer in self.net:
            if isinstance(layer, VectorizedLinear):
                weight, bias = layer.weight[: self.n_members], layer.bias[: self.n_members]
                if frozen:
                    weight, bias = weight.detach(), bias.detach()
                x = torch.baddbmm(bias, x, weight)
            else:
                x = layer(x)
        return x


class Actor(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, hidden: int, n_hidden: int, n_members: int, max_action: float):
        super().__init__()
        self.max_action = max_action
        self.net = vectorized_mlp(obs_dim, action_dim, hidden, n_hidden, n_members, nn.Tanh())

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.max_action * self.net(states)


class TD3BC(OfflineAlgorithm):
    def __init__(self, config: OfflineConfig, policy: DevicePolicy):
        super().__init__(config, policy)
        obs_dim, action_dim, m = self.data.obs_dim, self.data.action_dim, self.n_members
        self.actor = Actor(obs_dim, action_dim, config.hidden, config.actor_layers, m, self.max_action).to(self.device)
        self.critic = TwinCritic(obs_dim, action_dim, config.hidden, config.critic_layers, m).to(self.device)
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        for target in (self.actor_target, self.critic_target):
            target.requires_grad_(False)
        fused = self.device.type in ("cpu", "cuda")
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr, fused=fused)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr, fused=fused)

    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.actor(observations)

    def modules(self) -> dict[str, Any]:
        return {"actor": self.actor, "critic": self.critic, "actor_target": self.actor_target,
                "critic_target": self.critic_target, "actor_optimizer": self.actor_optimizer,
                "critic_optimizer": self.critic_optimizer}

    # -- one gradient step ------------------------------------------------------------------------
    @torch.no_grad()
    def target_q(self, rewards, next_states, not_dones, actions) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, a'): the clipped double-Q target and the smoothed target action it used."""
        cfg = self.config
        noise = (torch.randn_like(actions) * cfg.policy_noise * self.max_action).clamp(
            -cfg.noise_clip * self.max_action, cfg.noise_clip * self.max_action)
        next_actions = (self.actor_target(next_states) + noise).clamp(-self.max_action, self.max_action)
        target = self.critic_target(next_states, next_actions).min(0).values
        return rewards + not_dones * cfg.discount * target, next_actions

    def update_critic(self, states, actions, target) -> dict[str, float]:
        q = self.critic(states, actions)
        # per member: MSE(Q1, y) + MSE(Q2, y); summed over members, each gets its own gradient
        loss = (q - target).pow(2).mean(dim=(2, 3)).sum()
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()
        return {"critic_loss": loss.item() / self.n_members, "q": q[0].mean().item()}

    def q_weight(self, q_pi: torch.Tensor) -> torch.Tensor:
        """λ = α / mean|Q|, per member, treated as a constant."""
        return self.config.alpha / q_pi.abs().mean(dim=(1, 2), keepdim=True).detach()

    def update_targets(self) -> None:
        soft_update(self.critic_target, self.critic, self.config.tau)
        soft_update(self.actor_target, self.actor, self.config.tau)

    def update(self) -> dict[str, float]:
        self.updates += 1
        states, actions, rewards, next_states, not_dones = self.sampler.sample(self.n_members, self.config.batch_size)
        target, _ = self.target_q(rewards, next_states, not_dones, actions)
        metrics = self.update_critic(states, actions, target)
        if self.updates % self.config.policy_freq == 0:
            pi = self.actor(states)
            q_pi = self.critic.q1(states, pi, frozen=True)
            q_term = -(self.q_weight(q_pi) * q_pi).mean(dim=(1, 2))
            bc_term = (pi - actions).pow(2).mean(dim=(1, 2))
            loss = (q_term + bc_term).sum()
            self.actor_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.actor_optimizer.step()
            self.update_targets()
            metrics |= {"actor_loss": loss.item() / self.n_members, "bc_mse": bc_term.mean().item()}
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Returns and scores, plus the policy's drift from the data at this point of training (its
        mean over members: action_mse, q_gain), so a run's curves show whether drift shrinks as the
        critic matures."""
        metrics = super().evaluate()
        drift = self.policy_drift(n_states=1024)
        return metrics | {"drift/action_mse": float(drift["action_mse"].mean()),
                          "drift/q_gain": float(drift["q_gain"].mean())}

    # -- diagnosis --------------------------------------------------------------------------------
    @torch.no_grad()
    def policy_drift(self, n_states: int = 4096, seed: int = 0) -> dict[str, np.ndarray]:
        """Per member, on the same ``n_states`` dataset states: how far the policy's actions are from
        the data's (``action_mse``), the critic's value of the data's actions (``q_data``) and what it
        believes the policy gains over them (``q_gain`` = Q1(s, π(s)) − Q1(s, a)), and the fraction of
        action dimensions at the bounds. A policy far from the data with a large believed gain is the
        extrapolation error the behaviour-cloning term exists to hold back."""
        generator = torch.Generator(device=self.device).manual_seed(seed)  # leaves training's stream alone
        index = torch.randint(self.sampler.size, (n_states,), generator=generator, device=self.device)
        states = self.sampler.observations[index].expand(self.n_members, -1, -1)
        actions = self.sampler.actions[index].expand(self.n_members, -1, -1)
        pi = self.actor(states)
        q_data, q_pi = self.critic.q1(states, actions), self.critic.q1(states, pi)
        per_member = {"action_mse": (pi - actions).pow(2).mean(dim=(1, 2)), "q_data": q_data.mean(dim=(1, 2)),
                      "q_gain": (q_pi - q_data).mean(dim=(1, 2)),
                      "saturated_fraction": (pi.abs() >= 0.99 * self.max_action).float().mean(dim=(1, 2))}
        return {name: value.cpu().numpy() for name, value in per_member.items()}


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # a CPU budget: 50k steps (about 10 minutes per 5 seeds on 2 cores), evaluated every 5k
    "quick": {"total_steps": 50_000, "eval_every": 5000, "checkpoint_every": 10_000},
    "tiny": {"total_steps": 500, "eval_every": 250, "log_every": 50, "checkpoint_every": 250, "eval_episodes": 2},
}

SPEC = MethodSpec(name="td3bc", config_cls=OfflineConfig, presets=PRESETS, build=TD3BC, task=task_name,
                 inputs=offline_inputs, precisions=("fp32",))
