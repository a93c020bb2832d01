"""Reference updates of TD3+BC and A2PR for one seed, in plain functional PyTorch.

The batched implementations (``td3bc.py``, ``a2pr.py``) train several seeds as members of
vectorized networks, reuse forward passes and detach weights where a loss does not train them;
any later speed work (compiled updates, CUDA graphs) changes them further. This module is the
check they must pass: the algorithm box of each paper, in the official code's order (TD3+BC:
``td3_bc.py`` of CORL and of sfujim/TD3_BC; A2PR: ``A2PR.py`` of ltlhuuu/A2PR), one member at a
time, on plain weight matrices, with a textbook Adam. ``tests/test_offline_rl.py`` runs a few
updates of both from the same weights, minibatches and noise in float64 and compares every
parameter. Nothing here is used for training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # (weight in x out, bias 1 x out) per layer


def member_layers(net: torch.nn.Sequential, member: int) -> Layers:
    """Copies (leaf tensors) of one member's weights of a vectorized MLP."""
    return [(layer.weight[member].detach().clone().requires_grad_(), layer.bias[member].detach().clone()
             .requires_grad_()) for layer in net if hasattr(layer, "weight")]


def mlp(layers: Layers, x: torch.Tensor, tanh_output: bool = False) -> torch.Tensor:
    for index, (weight, bias) in enumerate(layers):
        x = x @ weight + bias
        if index < len(layers) - 1:
            x = torch.relu(x)
    return torch.tanh(x) if tanh_output else x


@dataclass
class Adam:
    """torch.optim.Adam's update (bias-corrected moments, eps added to the corrected root)."""

    params: list[torch.Tensor]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    step_count: int = 0
    m: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)

    def step(self, grads: list[torch.Tensor]) -> None:
        if not self.m:
            self.m = [torch.zeros_like(p) for p in self.params]
            self.v = [torch.zeros_like(p) for p in self.params]
        self.step_count += 1
        beta1, beta2 = self.betas
        correction1, correction2 = 1 - beta1 ** self.step_count, 1 - beta2 ** self.step_count
        with torch.no_grad():
            for p, g, m, v in zip(self.params, grads, self.m, self.v):
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                p.sub_(self.lr / correction1 * m / (v.sqrt() / correction2 ** 0.5 + self.eps))


def flat(layers: Layers) -> list[torch.Tensor]:
    return [t for pair in layers for t in pair]


def polyak(target: Layers, source: Layers, tau: float) -> None:
    with torch.no_grad():
        for t, s in zip(flat(target), flat(source)):
            t.lerp_(s, tau)


class ReferenceTD3BC:
    """One member of a batched TD3+BC (or A2PR: ``ReferenceA2PR``), as plain weights."""

    def __init__(self, algorithm, member: int):
        cfg, m = algorithm.config, algorithm.n_members
        self.cfg, self.max_action, self.updates = cfg, algorithm.max_action, 0
        self.actor = member_layers(algorithm.actor.net, member)
        self.actor_target = member_layers(algorithm.actor_target.net, member)
        # the twin critic's heads of member k are members k and m + k of its vectorized net
        self.critics = [member_layers(algorithm.critic.net, member), member_layers(algorithm.critic.net, m + member)]
        self.critic_targets = [member_layers(algorithm.critic_target.net, member),
                               member_layers(algorithm.critic_target.net, m + member)]
        self.actor_optimizer = Adam(flat(self.actor), cfg.actor_lr)
        self.critic_optimizer = Adam(flat(self.critics[0]) + flat(self.critics[1]), cfg.critic_lr)

    def pi(self, layers: Layers, states: torch.Tensor) -> torch.Tensor:
        return self.max_action * mlp(layers, states, tanh_output=True)

    def q(self, layers: Layers, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return mlp(layers, torch.cat([states, actions], -1))

    def td_target(self, rewards, next_states, not_dones, noise) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, top = self.cfg, self.max_action
        with torch.no_grad():
            smoothing = (noise * cfg.policy_noise * top).clamp(-cfg.noise_clip * top, cfg.noise_clip * top)
            next_actions = (self.pi(self.actor_target, next_states) + smoothing).clamp(-top, top)
            q_next = torch.minimum(*(self.q(c, next_states, next_actions) for c in self.critic_targets))
            return rewards + not_dones * self.cfg.discount * q_next, next_actions

    def critic_step(self, states, actions, target) -> None:
        loss = sum(((self.q(c, states, actions) - target) ** 2).mean() for c in self.critics)
        self.critic_optimizer.step(list(torch.autograd.grad(loss, self.critic_optimizer.params)))

    def targets_step(self) -> None:
        polyak(self.actor_target, self.actor, self.cfg.tau)
        for target, critic in zip(self.critic_targets, self.critics):
            polyak(target, critic, self.cfg.tau)

    def update(self, batch, noises: list[torch.Tensor]) -> None:
        states, actions, rewards, next_states, not_dones = batch
        self.updates += 1
        target, _ = self.td_target(rewards, next_states, not_dones, noises[0])
        self.critic_step(states, actions, target)
        if self.updates % self.cfg.policy_freq == 0:
            pi = self.pi(self.actor, states)
            q_pi = self.q(self.critics[0], states, pi)
            weight = self.cfg.alpha / q_pi.abs().mean().detach()
            loss = -weight * q_pi.mean() + ((pi - actions) ** 2).mean()
            self.actor_optimizer.step(list(torch.autograd.grad(loss, self.actor_optimizer.params)))
            self.targets_step()

    def parameters(self) -> dict[str, list[torch.Tensor]]:
        return {"actor": flat(self.actor), "critic_q1": flat(self.critics[0]), "critic_q2": flat(self.critics[1]),
                "actor_target": flat(self.actor_target)}


class ReferenceA2PR(ReferenceTD3BC):
    def __init__(self, algorithm, member: int):
        super().__init__(algorithm, member)
        cfg = algorithm.config
        self.value = member_layers(algorithm.value, member)
        self.encoder = member_layers(algorithm.vae.encoder, member)
        self.decoder = member_layers(algorithm.vae.decoder, member)
        self.value_optimizer = Adam(flat(self.value), cfg.value_lr)
        self.vae_optimizer = Adam(flat(self.encoder) + flat(self.decoder), cfg.vae_lr)

    def vae(self, states, actions, noise) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_std = mlp(self.encoder, torch.cat([states, actions], -1)).chunk(2, dim=-1)
        std = log_std.clamp(-4, 15).exp()
        latent = mean + std * noise
        return self.max_action * mlp(self.decoder, torch.cat([states, latent], -1), tanh_output=True), mean, std

    def update(self, batch, noises: list[torch.Tensor]) -> None:
        """Steps 1-4 of ``a2pr.py``'s docstring; ``noises``: target smoothing, the VAE step's latent
        noise, and (on actor steps) the actor step's latent noise, in that order."""
        cfg = self.cfg
        states, actions, rewards, next_states, not_dones = batch
        self.updates += 1
        target, next_actions = self.td_target(rewards, next_states, not_dones, noises[0])
        self.critic_step(states, actions, target)
        with torch.no_grad():  # the same target with the updated online critic; V regresses on the smaller
            online = rewards + not_dones * cfg.discount * torch.minimum(
                *(self.q(c, next_states, next_actions) for c in self.critics))
            value_target = torch.minimum(online, target)
        value = mlp(self.value, states)
        value_loss = ((value - value_target) ** 2).mean()
        self.value_optimizer.step(list(torch.autograd.grad(value_loss, self.value_optimizer.params)))
        value = value.detach()
        recon, mean, std = self.vae(states, actions, noises[1])
        with torch.no_grad():
            q_data = self.q(self.critics[0], states, actions)
        recon_loss = (cfg.vae_weight * (q_data > value).double() * (recon - actions) ** 2).mean()
        kl = -0.5 * (1 + (std ** 2).log() - mean ** 2 - std ** 2).mean()
        vae_loss = recon_loss + 0.5 * kl
        self.vae_optimizer.step(list(torch.autograd.grad(vae_loss, self.vae_optimizer.params)))
        if self.updates % cfg.policy_freq == 0:
            pi = self.pi(self.actor, states)
            q_pi = self.q(self.critics[0], states, pi)
            weight = cfg.alpha / q_pi.abs().mean().detach()
            recon_pi, _, _ = self.vae(states, pi, noises[2])
            with torch.no_grad():
                q_recon = self.q(self.critics[0], states, recon_pi)
            use_recon = (q_recon - value) >= (q_data - value)
            bc_target = torch.where(use_recon, recon_pi, actions)  # not detached, as the official code
            bc_weight = cfg.mask * ((q_recon >= value) | (q_data > value)).double()
            loss = -weight * q_pi.mean() + (bc_weight * (pi - bc_target) ** 2).mean()
            self.actor_optimizer.step(list(torch.autograd.grad(loss, self.actor_optimizer.params)))
            self.targets_step()

    def parameters(self) -> dict[str, list[torch.Tensor]]:
        return super().parameters() | {"value": flat(self.value), "vae_encoder": flat(self.encoder),
                                       "vae_decoder": flat(self.decoder)}
