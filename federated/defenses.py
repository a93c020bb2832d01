"""Client-side defenses on the shared update (a gradient in FedSGD, a weight delta in FedAvg).

* ``noise``: Gaussian noise of std ``noise_std`` on every tensor (GIFD/GGL's additive_noise, 0.01);
* ``clip``: scale the whole update to global L2 norm ≤ ``clip_norm`` (gradient_clipping, 4);
* ``clip+noise``: both, the local-DP recipe of Flower's ``LocalDpMod`` (clip, then Gaussian noise);
* ``prune``: per tensor, zero the ``prune_fraction`` of entries smallest in magnitude
  (gradient_compression, 20%).

``clip`` and ``prune`` are deterministic given the update, so an adaptive attacker applies them to
its own dummy gradients too (``deterministic_part``); noise it cannot reproduce.
"""

from __future__ import annotations

import torch

from grp_workbench.federated import FederatedError

DEFENSES = ("none", "noise", "clip", "clip+noise", "prune")


def clip_global_norm(update: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    norm = torch.sqrt(sum(t.pow(2).sum() for t in update))
    scale = torch.clamp(max_norm / (norm + 1e-12), max=1.0)
    return [t * scale for t in update]


def prune_smallest(update: list[torch.Tensor], fraction: float) -> list[torch.Tensor]:
    pruned = []
    for t in update:
        k = int(fraction * t.numel())
        if k == 0:
            pruned.append(t)
            continue
        threshold = t.abs().flatten().kthvalue(k).values
        pruned.append(torch.where(t.abs() > threshold, t, torch.zeros_like(t)))
    return pruned


def deterministic_part(defense: str, update: list[torch.Tensor], clip_norm: float = 4.0,
                       prune_fraction: float = 0.2) -> list[torch.Tensor]:
    """The part of ``defense`` an attacker can replay on its own gradients (identity for noise)."""
    if defense in ("clip", "clip+noise"):
        return clip_global_norm(update, clip_norm)
    if defense == "prune":
        return prune_smallest(update, prune_fraction)
    return update


def defend(defense: str, update: list[torch.Tensor], generator: torch.Generator, noise_std: float = 0.01,
           clip_norm: float = 4.0, prune_fraction: float = 0.2) -> list[torch.Tensor]:
    if defense not in DEFENSES:
        raise FederatedError(f"defense={defense!r} is not one of {', '.join(DEFENSES)}.")
    update = deterministic_part(defense, update, clip_norm, prune_fraction)
    if defense in ("noise", "clip+noise"):
        update = [t + noise_std * torch.randn(t.shape, generator=generator, dtype=t.dtype) for t in update]
    return update
