"""MBPO's probabilistic dynamics model: one Gaussian MLP, or an ensemble of them with elites.

Follows jannerm/mbpo (the TF model MBPO's paper results come from):

* inputs [s, a] standardized with the training inputs' mean and std (std < 1e-12 -> 1;
  ``mbpo/models/utils.py::TensorStandardScaler.fit``, applied in ``bnn.py:548``); outputs a diagonal
  Gaussian over [r, s' − s] (``constructor.py::format_samples_for_training``);
* 4 hidden layers of 200 swish units (``constructor.py:10-15``), per-layer L2 weight decay
  2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4 as TF's ``weight_decay · l2_loss(W)`` = decay · ΣW²/2;
* log-variance soft-clamped between learned bounds, max initialised at 0.5 and min at −10, one pair
  per ensemble (``bnn.py:169-171, 556-557``), with 0.01·Σ max − 0.01·Σ min added to the loss
  (``bnn.py:192``);
* loss per member: mean over batch and outputs of (μ − y)²·exp(−log σ²) + log σ², summed over
  members (``bnn.py::_compile_losses``); Adam lr 1e-3 (``constructor.py:16``);
* training: 20% of the data (at most 5,000 transitions) held out (``bnn.py:326``), each member a
  bootstrap resample of the rest (``bnn.py:337``) reshuffled every epoch, batch 256; after each epoch
  the holdout MSE of each member's mean, a member's weights snapshotted when it improves by more than
  1% relative, training stops once no member has improved for more than 5 epochs
  (``bnn.py:243-261``); then every member returns to its best snapshot (``bnn.py:411``) and the elites
  are the ``n_elites`` best by holdout MSE (``bnn.py:272-274``);
* prediction for rollouts: every member predicts, one elite is drawn uniformly per sample and its
  Gaussian sampled (``fake_env.py::step``).

The single model of "Is Model Ensemble Necessary?" is this model with one member and one elite.

Several seeds train as groups of members of one network (``n_groups``): each group has its own
data, normalizer, log-variance bounds, early stopping and elites. Departures: ``max_epochs`` caps the
epochs of one training (None: the official unbounded loop; MBPO bounds wall time with ``max_model_t``
instead, which would make runs machine-dependent); a group that has stopped keeps training with the
others but its snapshots no longer change, so what it returns is what it would have returned alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from grp_workbench.rl import RLError
from grp_workbench.rl.common.networks import VectorizedLinear

WEIGHT_DECAYS = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)  # constructor.py: one per layer, output last


@dataclass
class DynamicsConfig:
    members: int = 7  # 1: the single model
    elites: int = 5
    hidden: int = 200
    n_hidden: int = 4
    lr: float = 1e-3
    batch_size: int = 256
    holdout_ratio: float = 0.2
    max_holdout: int = 5000
    max_epochs_since_update: int = 5
    improvement: float = 0.01  # relative holdout-MSE improvement that counts as one
    max_epochs: int | None = None  # None: until early stopping, as the official code
    bootstrap: bool = True  # each member trains on a resample with replacement

    def __post_init__(self) -> None:
        if not 1 <= self.elites <= self.members:
            raise RLError(f"dynamics elites={self.elites} must lie in 1..members={self.members}.")


class GaussianDynamics(nn.Module):
    """(groups · members) Gaussian MLPs [s, a] -> N(μ, σ²) over [r, s' − s]."""

    def __init__(self, obs_dim: int, action_dim: int, config: DynamicsConfig, n_groups: int = 1):
        super().__init__()
        if config.n_hidden + 1 != len(WEIGHT_DECAYS):
            raise RLError(f"dynamics n_hidden={config.n_hidden}: MBPO's per-layer weight decays are defined for 4 "
                          "hidden layers.")
        self.config, self.n_groups, self.obs_dim = config, n_groups, obs_dim
        self.in_dim, self.out_dim = obs_dim + action_dim, obs_dim + 1
        width, layers, n = self.in_dim, [], n_groups * config.members
        for _ in range(config.n_hidden):
            layers.append(VectorizedLinear(width, config.hidden, n))
            width = config.hidden
        layers.append(VectorizedLinear(width, 2 * self.out_dim, n))
        self.layers = nn.ModuleList(layers)
        self.max_logvar = nn.Parameter(torch.full((n_groups, 1, 1, self.out_dim), 0.5))
        self.min_logvar = nn.Parameter(torch.full((n_groups, 1, 1, self.out_dim), -10.0))
        self.register_buffer("input_mean", torch.zeros(n_groups, 1, self.in_dim))
        self.register_buffer("input_std", torch.ones(n_groups, 1, self.in_dim))
        self.register_buffer("elite_index", torch.arange(config.elites).repeat(n_groups, 1))
        self.optimizer = torch.optim.Adam(self.parameters(), lr=config.lr)

    # -- the network ------------------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (groups, members, B, in), raw -> mean and log-variance (groups, members, B, out)."""
        g, m = self.n_groups, self.config.members
        x = (inputs - self.input_mean.unsqueeze(1)) / self.input_std.unsqueeze(1)
        x = x.reshape(g * m, *x.shape[2:])
        for layer in self.layers[:-1]:
            x = nn.functional.silu(layer(x))
        out = self.layers[-1](x).view(g, m, -1, 2 * self.out_dim)
        mean, raw_logvar = out.split(self.out_dim, dim=-1)
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)
        return mean, logvar

    def weight_decay(self) -> torch.Tensor:
        return sum(decay * layer.weight.square().sum() / 2 for decay, layer in zip(WEIGHT_DECAYS, self.layers))

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mean, logvar = self(inputs)
        nll = ((mean - targets).square() * torch.exp(-logvar) + logvar).mean(dim=(2, 3)).sum()
        bounds = 0.01 * self.max_logvar.sum() - 0.01 * self.min_logvar.sum()
        return nll + self.weight_decay() + bounds

    @torch.no_grad()
    def mse(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(groups, members) mean squared error of the means; inputs (groups, N, in) shared by members."""
        mean, _ = self(inputs.unsqueeze(1).expand(-1, self.config.members, -1, -1))
        return (mean - targets.unsqueeze(1)).square().mean(dim=(2, 3))

    # -- training ---------------------------------------------------------------------------------
    def fit(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """Train on (groups, N, in) -> (groups, N, out) with holdout early stopping (module docstring);
        returns the elites' mean holdout MSE, the epochs run and the gradient steps."""
        cfg, g, m = self.config, self.n_groups, self.config.members
        device, n = inputs.device, inputs.shape[1]
        n_holdout = min(int(n * cfg.holdout_ratio), cfg.max_holdout)
        if n - n_holdout < 2:
            raise RLError(f"the dynamics model needs more than {n} transitions to train (holdout {n_holdout}).")
        order = torch.argsort(torch.rand(g, n, generator=generator, device=device), dim=1)
        take = lambda x, idx: torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # noqa: E731
        held_in, held_out = take(inputs, order[:, :n_holdout]), take(targets, order[:, :n_holdout])
        train_in, train_out = take(inputs, order[:, n_holdout:]), take(targets, order[:, n_holdout:])
        n_train = n - n_holdout
        self.input_mean.copy_(train_in.mean(1, keepdim=True))
        std = train_in.std(1, unbiased=False, keepdim=True)
        self.input_std.copy_(torch.where(std < 1e-12, torch.ones_like(std), std))

        if cfg.bootstrap:
            sample = torch.randint(n_train, (g, m, n_train), generator=generator, device=device)
        else:
            sample = torch.arange(n_train, device=device).repeat(g, m, 1)
        best = torch.full((g, m), math.inf, device=device)
        snapshot = {name: p.detach().clone() for name, p in self.layers.named_parameters()}
        since_update = torch.zeros(g, dtype=torch.long, device=device)
        running = torch.ones(g, dtype=torch.bool, device=device)
        epochs = steps = 0
        while running.any() and (cfg.max_epochs is None or epochs < cfg.max_epochs):
            shuffle = torch.argsort(torch.rand(g, m, n_train, generator=generator, device=device), dim=2)
            sample = torch.gather(sample, 2, shuffle)
            for start in range(0, n_train, cfg.batch_size):
                index = sample[:, :, start:start + cfg.batch_size]  # (g, m, b)
                batch_in = train_in[torch.arange(g, device=device)[:, None, None], index]
                batch_out = train_out[torch.arange(g, device=device)[:, None, None], index]
                loss = self.loss(batch_in, batch_out)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                steps += 1
            epochs += 1
            holdout = self.mse(held_in, held_out)
            improved = ((best - holdout) / best > cfg.improvement) & running[:, None]
            improved |= torch.isinf(best) & running[:, None]
            best = torch.where(improved, holdout, best)
            flat = improved.reshape(-1)
            for name, p in self.layers.named_parameters():
                snapshot[name][flat] = p.detach()[flat]
            since_update = torch.where(improved.any(1), 0, since_update + 1)
            running &= since_update <= cfg.max_epochs_since_update
        with torch.no_grad():
            for name, p in self.layers.named_parameters():
                p.copy_(snapshot[name])
        holdout = self.mse(held_in, held_out)
        self.elite_index.copy_(torch.argsort(holdout, dim=1)[:, :cfg.elites])
        elite_mse = torch.gather(holdout, 1, self.elite_index)
        return {"model_holdout_mse": elite_mse.mean().item(), "model_epochs": float(epochs),
                "model_steps": float(steps)}

    # -- rollouts ---------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, states: torch.Tensor, actions: torch.Tensor, generator: torch.Generator,
             deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(groups, B, ·) -> next states (groups, B, obs) and rewards (groups, B, 1): each sample
        from one uniformly drawn elite's Gaussian (its mean if ``deterministic``)."""
        g, m, b = self.n_groups, self.config.members, states.shape[1]
        inputs = torch.cat([states, actions], -1).unsqueeze(1).expand(-1, m, -1, -1)
        mean, logvar = self(inputs)
        if not deterministic:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device)
            mean = mean + noise * torch.exp(0.5 * logvar)
        pick = torch.randint(self.config.elites, (g, b), generator=generator, device=states.device)
        member = torch.gather(self.elite_index, 1, pick)  # (g, b)
        chosen = mean[torch.arange(g, device=states.device)[:, None], member, torch.arange(b, device=states.device)]
        return states + chosen[..., 1:], chosen[..., :1]

    @torch.no_grad()
    def predict_mean(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(groups, elites, B, obs): the elites' mean next states (for the value-aware model error)."""
        inputs = torch.cat([states, actions], -1).unsqueeze(1).expand(-1, self.config.members, -1, -1)
        mean, _ = self(inputs)
        index = self.elite_index[:, :, None, None].expand(-1, -1, *mean.shape[2:])
        return states.unsqueeze(1) + torch.gather(mean, 1, index)[..., 1:]
