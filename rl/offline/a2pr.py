"""A2PR (Liu et al., "Adaptive Advantage-Guided Policy Regularization for Offline RL", ICML 2024).

TD3+BC whose behaviour-cloning target is chosen per sample by an advantage estimate. Per gradient
step, following the official code (ltlhuuu/A2PR, ``A2PR.py``) in its order:

1. critic: the TD3+BC clipped double-Q update with target y;
2. value V(s): regress on min(y, r + γ(1 − done)·min_j Q_j(s', a')), the same target recomputed
   with the just-updated online critic (plain MSE);
3. VAE on "good" dataset actions: reconstruction weighted by ``vae_weight``·1[Q_1(s, a) > V(s)],
   plus 0.5·KL;
4. every ``policy_freq`` steps, actor: −λ·Q_1(s, π(s)) + mean(w·(π(s) − â)²), where â is the VAE
   reconstruction of the policy action, ã = VAE(s, π(s)), if its advantage Q_1(s, ã) − V(s) is at
   least that of the dataset action a, else a; and w = ``mask``·1[Q_1(s, ã) ≥ V(s) or Q_1(s, a) > V(s)].

V(s) in steps 3-4 is the value computed before its own update, and every Q_1 after step 1 uses
the updated online critic, as in the official code. There the BC target is not detached, so the
gradient of the BC term also flows through the VAE's input π(s); ``detach_bc_target=True`` stops
that (not the official behaviour).

Networks as the official code: actor 3 × 256, critics and V 4 × 256, VAE 750-750 with a latent of
twice the action size. alpha / mask / vae_weight / discount left unset take the official README's
values for the task's family (hopper, halfcheetah, walker2d; D4RL's download names such as
``hopper_medium-v2.hdf5`` are recognised). ``pointreach`` (this project's test task, not in the
paper) takes the official code's defaults (``utils/config.py``), said in this table, not by
omission. Any other dataset is an explicit choice: ``hyperparameters=<family>`` or
``hyperparameters=code-defaults``, or all four values set; otherwise the config stops with an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.trainer import MethodSpec
from grp_workbench.rl import RLError
from grp_workbench.rl.common.networks import frozen_forward, vectorized_mlp
from grp_workbench.rl.offline.common import OfflineConfig, offline_inputs, task_name
from grp_workbench.rl.offline.datasets import task_family
from grp_workbench.rl.offline.td3bc import TD3BC

# Official README (medium tasks); other datasets of a family use the same values.
OFFICIAL_DEFAULTS = {"alpha": 2.5, "mask": 0.5, "vae_weight": 1.0, "discount": 0.99}  # utils/config.py
OFFICIAL_TASK_HYPERPARAMETERS = {
    "halfcheetah": {"alpha": 40.0, "vae_weight": 1.0, "mask": 1.0, "discount": 0.99},
    "hopper": {"alpha": 2.5, "vae_weight": 1.0, "mask": 0.4, "discount": 0.995},
    "walker2d": {"alpha": 2.5, "vae_weight": 1.5, "mask": 1.0, "discount": 0.99},
    "pointreach": OFFICIAL_DEFAULTS,  # not in the paper: the official code's defaults, chosen here
    "code-defaults": OFFICIAL_DEFAULTS,
}
HYPERPARAMETER_KEYS = tuple(OFFICIAL_DEFAULTS)


@dataclass
class A2PRConfig(OfflineConfig):
    actor_layers: int = 3
    critic_layers: int = 4
    value_layers: int = 4
    value_lr: float = 3e-4
    vae_lr: float = 1e-3
    vae_hidden: int = 750
    # None = the official value for the task (README), else the official code's default
    alpha: float | None = None  # Q-term weight, lambda = alpha / mean|Q|
    discount: float | None = None
    mask: float | None = None  # weight of the advantage-guided BC term
    vae_weight: float | None = None  # weight of the VAE reconstruction on positive-advantage dataset actions
    detach_bc_target: bool = False  # official: the VAE target is not detached
    # where unset alpha / discount / mask / vae_weight come from: auto (the dataset's family), a family
    # name (hopper, halfcheetah, walker2d, pointreach) or code-defaults (the official utils/config.py)
    hyperparameters: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        source = task_family(self.dataset) if self.hyperparameters == "auto" else self.hyperparameters
        unset = [key for key in HYPERPARAMETER_KEYS if getattr(self, key) is None]
        if source not in OFFICIAL_TASK_HYPERPARAMETERS:
            if self.hyperparameters != "auto":
                raise RLError(f"hyperparameters={self.hyperparameters!r} is not one of auto, "
                              f"{', '.join(OFFICIAL_TASK_HYPERPARAMETERS)}.")
            if unset:
                raise RLError(f"A2PR's official values of {', '.join(unset)} are per task family (hopper, halfcheetah, "
                              f"walker2d) and dataset {self.dataset!r} is none of them: choose, e.g. --set "
                              "hyperparameters=hopper, --set hyperparameters=code-defaults (the official code's "
                              "defaults), or set " + " ".join(f"{k}=..." for k in unset) + ".")
            return
        for key in unset:
            setattr(self, key, OFFICIAL_TASK_HYPERPARAMETERS[source][key])
        # not a dataclass field (not saved, not settable): a copy with another dataset (apply_overrides)
        # must derive these again rather than keep this dataset's values
        self.derived_fields = tuple(unset)


class VAE(nn.Module):
    """BCQ-style conditional VAE over actions, one per member."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int, n_members: int, max_action: float):
        super().__init__()
        self.latent_dim, self.max_action = 2 * action_dim, max_action
        self.encoder = vectorized_mlp(obs_dim + action_dim, 2 * self.latent_dim, hidden, 2, n_members)
        self.decoder = vectorized_mlp(obs_dim + self.latent_dim, action_dim, hidden, 2, n_members, nn.Tanh())

    def forward(self, states: torch.Tensor, actions: torch.Tensor, frozen: bool = False) -> tuple[torch.Tensor, ...]:
        """(reconstruction, mean, std). ``frozen``: gradients reach the inputs, not the VAE's weights
        (the actor step: the official code's stray VAE gradients are cleared before the VAE's own step)."""
        run = frozen_forward if frozen else (lambda net, x: net(x))
        mean, log_std = run(self.encoder, torch.cat([states, actions], -1)).chunk(2, dim=-1)
        std = log_std.clamp(-4, 15).exp()
        z = mean + std * torch.randn_like(std)
        return self.max_action * run(self.decoder, torch.cat([states, z], -1)), mean, std


def advantage_guided_target(actions, recon_pi, q_data, q_recon, value, mask: float):
    """Per sample: the BC target (ã if A(s, ã) ≥ A(s, a) else a) and its weight
    mask·1[Q(s, ã) ≥ V(s) or Q(s, a) > V(s)]."""
    advantage_data, advantage_pi = q_data - value, q_recon - value
    use_recon = advantage_pi >= advantage_data
    target = torch.where(use_recon, recon_pi, actions)
    weight = mask * ((q_recon >= value) | (q_data > value)).float()
    return target, weight


class A2PR(TD3BC):
    def __init__(self, config: A2PRConfig, policy: DevicePolicy):
        super().__init__(config, policy)
        obs_dim, action_dim, m = self.data.obs_dim, self.data.action_dim, self.n_members
        self.value = vectorized_mlp(obs_dim, 1, config.hidden, config.value_layers, m).to(self.device)
        self.vae = VAE(obs_dim, action_dim, config.vae_hidden, m, self.max_action).to(self.device)
        fused = self.device.type in ("cpu", "cuda")
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=config.value_lr, fused=fused)
        self.vae_optimizer = torch.optim.Adam(self.vae.parameters(), lr=config.vae_lr, fused=fused)

    def modules(self) -> dict[str, Any]:
        return super().modules() | {"value": self.value, "vae": self.vae, "value_optimizer": self.value_optimizer,
                                    "vae_optimizer": self.vae_optimizer}

    def update(self) -> dict[str, float]:
        cfg: A2PRConfig = self.config  # type: ignore[assignment]
        self.updates += 1
        states, actions, rewards, next_states, not_dones = self.sampler.sample(self.n_members, cfg.batch_size)
        target, next_actions = self.target_q(rewards, next_states, not_dones, actions)
        metrics = self.update_critic(states, actions, target)

        # 2. state value, against the smaller of the target-network and online-network TD targets
        with torch.no_grad():
            online = rewards + not_dones * cfg.discount * self.critic(next_states, next_actions).min(0).values
            value_target = torch.minimum(online, target)
        value = self.value(states)
        value_loss = (value - value_target).pow(2).mean(dim=(1, 2)).sum()
        self.value_optimizer.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_optimizer.step()
        value = value.detach()

        # 3. VAE on dataset actions with a positive advantage
        recon, mean, std = self.vae(states, actions)
        with torch.no_grad():
            q_data = self.critic.q1(states, actions)
        good = cfg.vae_weight * (q_data > value).float()
        recon_loss = (good * (recon - actions).pow(2)).mean(dim=(1, 2))
        kl = -0.5 * (1 + (std.pow(2)).log() - mean.pow(2) - std.pow(2)).mean(dim=(1, 2))
        vae_loss = (recon_loss + 0.5 * kl).sum()
        self.vae_optimizer.zero_grad(set_to_none=True)
        vae_loss.backward()
        self.vae_optimizer.step()
        metrics |= {"value_loss": value_loss.item() / self.n_members, "vae_loss": vae_loss.item() / self.n_members,
                    "good_fraction": (q_data > value).float().mean().item()}

        # 4. actor with the advantage-guided behaviour-cloning target
        if self.updates % cfg.policy_freq == 0:
            pi = self.actor(states)
            q_pi = self.critic.q1(states, pi, frozen=True)
            q_term = -(self.q_weight(q_pi) * q_pi).mean(dim=(1, 2))
            recon_pi, _, _ = self.vae(states, pi, frozen=True)
            with torch.no_grad():
                q_recon = self.critic.q1(states, recon_pi)
            bc_target, weight = advantage_guided_target(actions, recon_pi, q_data, q_recon, value, cfg.mask)
            if cfg.detach_bc_target:
                bc_target = bc_target.detach()
            bc_term = (weight * (pi - bc_target).pow(2)).mean(dim=(1, 2))
            loss = (q_term + bc_term).sum()
            self.actor_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.actor_optimizer.step()
            self.update_targets()
            metrics |= {"actor_loss": loss.item() / self.n_members, "bc_term": bc_term.mean().item(),
                        "recon_target_fraction": (q_recon - value >= q_data - value).float().mean().item()}
        return metrics


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": {"total_steps": 50_000, "eval_every": 5000, "checkpoint_every": 10_000},
    "tiny": {"total_steps": 500, "eval_every": 250, "log_every": 50, "checkpoint_every": 250, "eval_episodes": 2},
}


def _build(config: A2PRConfig, policy: DevicePolicy) -> A2PR:
    return A2PR(config, policy)


SPEC = MethodSpec(name="a2pr", config_cls=A2PRConfig, presets=PRESETS, build=_build, task=task_name,
                 inputs=offline_inputs, precisions=("fp32",))
