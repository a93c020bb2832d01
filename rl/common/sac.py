"""Soft Actor-Critic with automatic entropy tuning, several seeds trained as members of one network.

The update follows softlearning's SAC, the agent inside MBPO's official code
(jannerm/mbpo, ``softlearning/algorithms/sac.py``), with stable-baselines3's SAC as the second
reading (``stable_baselines3/sac/sac.py::SAC.train``):

1. temperature: minimize −log α · (log π(ã|s) + H̄) with ã ~ π(·|s), α = exp(log α), log α starting
   at 0 (α = 1), target entropy H̄ per environment (MBPO's configs: −1 for Hopper, −3 for Walker2d);
2. critics: y = r + γ·(1 − done)·(min_j Q'_j(s', ã') − α·log π(ã'|s')), ã' ~ π(·|s');
   minimize ½ Σ_j mean (Q_j(s, a) − y)² (each twin its own head), plus an optional penalty that a
   caller adds (MBPO's adversarial-state term, rl/mbrl/);
3. actor: minimize mean(α·log π(ã|s) − min_j Q_j(s, ã)), against the critics after their step
   (SB3's order; softlearning evaluates all three losses on one graph before any step);
4. Polyak-average the target critics with τ every update (``target_update_interval`` 1).

Defaults are softlearning's and MBPO's (``examples/development/variants.py``): Adam 3e-4 for all three,
γ 0.99, τ 5e-3, batch 256, two hidden layers of 256 ReLU units, a tanh-squashed Gaussian policy with
log σ clipped to [−20, 2]. Member k has its own initialization, batch, α and optimizer state; summing
the members' losses gives each member exactly its own gradient (Adam is elementwise).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from grp_workbench.rl.common.networks import TwinQ, soft_update, vectorized_mlp

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # softlearning's GaussianPolicy and SB3's SAC actor


@dataclass
class SACConfig:
    hidden: int = 256
    n_hidden: int = 2
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 5e-3
    initial_log_alpha: float = 0.0
    target_entropy: float | None = None  # None: −(action dimensions), SB3's and softlearning's "auto"


class SquashedGaussianActor(nn.Module):
    """π(a|s) = max_action · tanh(u), u ~ N(μ(s), σ(s)), one MLP per member."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int, n_hidden: int, n_members: int, max_action: float):
        super().__init__()
        self.action_dim, self.max_action = action_dim, max_action
        self.net = vectorized_mlp(obs_dim, 2 * action_dim, hidden, n_hidden, n_members)

    def forward(self, states: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(members, B, obs) -> actions (members, B, act) and log π (members, B, 1)."""
        mean, log_std = self.net(states).split(self.action_dim, dim=-1)
        if deterministic:
            return self.max_action * torch.tanh(mean), torch.zeros_like(mean[..., :1])
        std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        noise = torch.randn_like(mean)
        u = mean + std * noise
        gaussian_log_prob = (-0.5 * noise.square() - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1, keepdim=True)
        # log |d tanh(u)/du| = log(1 − tanh(u)²), in the overflow-free form 2·(log 2 − u − softplus(−2u))
        squash = (2 * (math.log(2) - u - nn.functional.softplus(-2 * u))).sum(-1, keepdim=True)
        log_prob = gaussian_log_prob - squash  # of tanh(u) in [-1, 1], where the target entropy is set
        return self.max_action * torch.tanh(u), log_prob


class SAC:
    """The agent: networks, targets, temperature, optimizers; ``update`` takes one batch per member."""

    def __init__(self, obs_dim: int, action_dim: int, max_action: float, n_members: int, config: SACConfig,
                 device: torch.device, critic_mlp: Callable[..., nn.Sequential] = vectorized_mlp):
        self.config, self.n_members, self.device = config, n_members, device
        self.actor = SquashedGaussianActor(obs_dim, action_dim, config.hidden, config.n_hidden, n_members,
                                           max_action).to(device)
        self.critic = TwinQ(obs_dim, action_dim, config.hidden, config.n_hidden, n_members, critic_mlp).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.full((n_members, 1, 1), config.initial_log_alpha, device=device, requires_grad=True)
        self.target_entropy = (-float(action_dim) if config.target_entropy is None else config.target_entropy)
        fused = device.type in ("cpu", "cuda")
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr, fused=fused)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr, fused=fused)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)
        self.updates = 0

    @torch.no_grad()
    def act(self, states: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self.actor(states, deterministic)[0]

    def update(self, states: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_states: torch.Tensor,
               not_dones: torch.Tensor,
               critic_penalty: Callable[[TwinQ], tuple[torch.Tensor, dict[str, float]]] | None = None
               ) -> dict[str, float]:
        """One SAC update of every member on its batch (each tensor (members, B, ·)). ``critic_penalty``
        returns a loss (summed over members) added to the critic loss, and its metrics."""
        cfg, m = self.config, self.n_members
        self.updates += 1
        alpha = self.log_alpha.detach().exp()

        # critics, with the temperature of before this update (as softlearning's joint step)
        with torch.no_grad():
            next_actions, next_log_prob = self.actor(next_states)
            next_q = self.critic_target(next_states, next_actions).min(0).values
            target = rewards + not_dones * cfg.discount * (next_q - alpha * next_log_prob)
        q = self.critic(states, actions)
        critic_loss = 0.5 * (q - target).square().mean(dim=(2, 3)).sum()
        metrics: dict[str, float] = {}
        if critic_penalty is not None:
            penalty, metrics = critic_penalty(self.critic)
            critic_loss = critic_loss + penalty
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        # actor, through the critics' inputs only
        pi, log_prob = self.actor(states)
        q_pi = self.critic(states, pi, frozen=True).min(0).values
        actor_loss = (alpha * log_prob - q_pi).mean(dim=(1, 2)).sum()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()

        # temperature
        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean(dim=(1, 2)).sum()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optimizer.step()

        soft_update(self.critic_target, self.critic, cfg.tau)
        return metrics | {"critic_loss": critic_loss.item() / m, "actor_loss": actor_loss.item() / m,
                          "q": q[0].mean().item(), "alpha": alpha.mean().item(),
                          "entropy": -log_prob.mean().item()}

    def modules(self) -> dict[str, Any]:
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target,
                "actor_optimizer": self.actor_optimizer, "critic_optimizer": self.critic_optimizer,
                "alpha_optimizer": self.alpha_optimizer}

    def state_dict(self) -> dict[str, Any]:
        return ({"updates": self.updates, "log_alpha": self.log_alpha.detach().clone()}
                | {name: module.state_dict() for name, module in self.modules().items()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = state["updates"]
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        for name, module in self.modules().items():
            module.load_state_dict(state[name])

