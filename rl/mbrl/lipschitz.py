"""The two critic regularizers of "Is Model Ensemble Necessary?" (Zheng et al., ICLR 2023), and the
diagnostics its argument rests on.

No official code is public (the OpenReview form: "no URL"), so the exact forms here are ours and
are marked as such in rl/mbrl/README.md:

* spectral normalization (Miyato et al., 2018) of chosen critic layers: each member's weight is
  divided by its largest singular value, estimated by one power iteration per training forward pass
  (torch's ``spectral_norm`` default ``n_power_iterations=1``), done per member since a batched
  layer holds one matrix per member. ``sn_layers`` picks the layers (``SN_LAYERS``); the default,
  every layer but the output, keeps the hidden map 1-Lipschitz while the unconstrained output layer
  can still scale to MuJoCo's Q-values of several hundred (an all-layers 1-Lipschitz critic cannot
  change by more than |Δs| + |Δa| between any two inputs, far less than Hopper's value range);
* adversarial state noise: δ in the l∞ ball of radius ε (in units of each state dimension's
  standard deviation in the real data) that maximizes Σ_j (Q_j(s + δ, a) − Q_j(s, a))², found by
  ``steps`` projected sign-gradient steps of size 2.5·ε/steps from a uniform start (Madry et al.'s
  PGD); the critic loss adds weight · mean_j,batch (Q_j(s + δ, a) − Q_j(s, a))² on the
  model-generated states of the batch, with gradients through both terms (the smoothness penalty of
  SR²L / CAPS).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from grp_workbench.rl import RLError
from grp_workbench.rl.common.networks import VectorizedLinear, vectorized_mlp

SN_LAYERS = ("none", "hidden", "all", "penultimate")


class MemberSpectralNorm(nn.Module):
    """Parametrization W -> W / σ_max(W) of a (members, in, out) weight, per member."""

    def __init__(self, weight: torch.Tensor, eps: float = 1e-12):
        super().__init__()
        members, n_in, n_out = weight.shape
        self.eps = eps
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("u", nn.functional.normalize(torch.randn(members, n_out, generator=generator), dim=1,
                                                          eps=eps).to(weight))
        self.register_buffer("v", nn.functional.normalize(torch.randn(members, n_in, generator=generator), dim=1,
                                                          eps=eps).to(weight))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.v.copy_(nn.functional.normalize(torch.einsum("mio,mo->mi", weight, self.u), dim=1, eps=self.eps))
                self.u.copy_(nn.functional.normalize(torch.einsum("mio,mi->mo", weight, self.v), dim=1, eps=self.eps))
        # clones: a later forward pass updates the buffers in place while this graph still needs them
        sigma = torch.einsum("mi,mio,mo->m", self.v.clone(), weight, self.u.clone())
        return weight / sigma[:, None, None]


def spectral_mlp_factory(sn_layers: str):
    """A ``vectorized_mlp`` builder whose chosen layers are spectral-normalized (for ``TwinQ``)."""
    if sn_layers not in SN_LAYERS:
        raise RLError(f"sn_layers={sn_layers!r} is not one of {', '.join(SN_LAYERS)}.")

    def build(in_features: int, out_features: int, hidden: int, n_hidden: int, n_members: int) -> nn.Sequential:
        net = vectorized_mlp(in_features, out_features, hidden, n_hidden, n_members)
        linear = [layer for layer in net if isinstance(layer, VectorizedLinear)]
        chosen = {"none": [], "hidden": linear[:-1], "all": linear, "penultimate": linear[-2:-1]}[sn_layers]
        for layer in chosen:
            parametrize.register_parametrization(layer, "weight", MemberSpectralNorm(layer.weight.detach()))
        return net

    return build


def spectral_norms(net: nn.Module) -> torch.Tensor:
    """The largest singular value of every member's weight in every batched layer, by SVD (a check on
    the power iteration, not used in training): (layers, members)."""
    with torch.no_grad():
        return torch.stack([torch.linalg.matrix_norm(layer.weight, ord=2) for layer in net.modules()
                            if isinstance(layer, VectorizedLinear)])


def adversarial_states(critic: nn.Module, states: torch.Tensor, actions: torch.Tensor, radius: torch.Tensor,
                       steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """δ with |δ_i| <= radius_i that (approximately) maximizes Σ_j (Q_j(s + δ, a) − Q_j(s, a))²;
    the critic's weights get no gradient from the search. ``radius`` broadcasts against ``states``."""
    with torch.no_grad():
        clean = critic(states, actions, frozen=True)
        start = torch.rand(states.shape, generator=generator, device=states.device)
        delta = (2 * start - 1) * radius
    step_size = 2.5 * radius / max(steps, 1)
    for _ in range(steps):
        delta.requires_grad_(True)
        gap = (critic(states + delta, actions, frozen=True) - clean).square().sum()
        (grad,) = torch.autograd.grad(gap, delta)
        with torch.no_grad():
            delta = torch.maximum(torch.minimum(delta + step_size * grad.sign(), radius), -radius)
    return delta.detach()


def smoothness_penalty(critic: nn.Module, states: torch.Tensor, actions: torch.Tensor,
                       delta: torch.Tensor) -> torch.Tensor:
    """(twins, members) mean over the batch of (Q_j(s + δ, a) − Q_j(s, a))²."""
    return (critic(states + delta, actions) - critic(states, actions)).square().mean(dim=(2, 3))


def critic_gradient_norms(critic: nn.Module, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """‖∇_s Q_j(s, a)‖₂ for both twins at every (s, a): (twins, members, B), an empirical local
    Lipschitz constant of the critic in s."""
    states = states.detach().requires_grad_(True)
    q = critic(states, actions, frozen=True)
    first = torch.autograd.grad(q[0].sum(), states, retain_graph=True)[0]  # each Q(s_i) depends on s_i only
    second = torch.autograd.grad(q[1].sum(), states)[0]
    return torch.stack([first.norm(dim=-1), second.norm(dim=-1)])
