"""Networks with a leading member dimension, so that several seeds (and twin critics) train as one.

A ``VectorizedLinear`` holds E independent weight matrices and maps (E, B, in) -> (E, B, out) with
one batched matmul; an MLP of them is E independent MLPs that cost about as much as one on a CPU
with small layers, because the per-call overhead, not the arithmetic, dominates there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


class VectorizedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, n_members: int):
        super().__init__()
        self.in_features, self.out_features, self.n_members = in_features, out_features, n_members
        self.weight = nn.Parameter(torch.empty(n_members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_members, 1, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default init (kaiming uniform with a = sqrt(5)), drawn independently per member
        bound = 1 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"members={self.n_members}, in={self.in_features}, out={self.out_features}"


def vectorized_mlp(in_features: int, out_features: int, hidden: int, n_hidden: int, n_members: int,
                   output_activation: nn.Module | None = None) -> nn.Sequential:
    """``n_hidden`` ReLU layers of width ``hidden``, then a linear output (and ``output_activation``)."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(n_hidden):
        layers += [VectorizedLinear(width, hidden, n_members), nn.ReLU()]
        width = hidden
    layers.append(VectorizedLinear(width, out_features, n_members))
    if output_activation is not None:
        layers.append(output_activation)
    return nn.Sequential(*layers)


def frozen_forward(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` with its weights detached: gradients reach ``x`` but no weight gradient is computed
    (a backward pass through a net whose optimizer does not step on this loss skips that work)."""
    for layer in net:
        if isinstance(layer, VectorizedLinear):
            x = torch.baddbmm(layer.bias.detach(), x, layer.weight.detach())
        else:
            x = layer(x)
    return x


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging target ← (1 − τ)·target + τ·source."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


class TwinQ(nn.Module):
    """Two Q-networks per member as one (2·members)-wide batched MLP; ``critic_factory`` may build the
    MLP another way (with spectral-normalized layers, rl/mbrl/)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int, n_hidden: int, n_members: int,
                 mlp: Callable[..., nn.Sequential] = vectorized_mlp):
        super().__init__()
        self.n_members = n_members
        self.net = mlp(obs_dim + action_dim, 1, hidden, n_hidden, 2 * n_members)

    def forward(self, states: torch.Tensor, actions: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """(members, B, ·) -> (2, members, B, 1). ``frozen``: gradients reach the inputs, not the weights."""
        inputs = torch.cat([states, actions], -1)
        inputs = torch.cat([inputs, inputs])
        q = frozen_forward(self.net, inputs) if frozen else self.net(inputs)
        return q.view(2, self.n_members, *inputs.shape[1:-1], 1)
