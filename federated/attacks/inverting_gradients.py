"""Inverting Gradients (Geiping et al., NeurIPS 2020), the attack GIFD builds on.

Labels from the last layer's gradient; images optimized with Adam (lr 0.1, step decay ×0.1 at 3/8,
5/8, 7/8 of the iterations) to minimize 1 − cos(∇θ(x̂), ∇θ*) + λ_TV·TV(x̂), kept in the valid box
[0, 1] after every step; several restarts, the one with the lowest gradient loss is returned (no
ground truth is used to choose). GIFD's config: TV 1e-4, 4 restarts; its pixel baseline runs
15,000 iterations, the ``quick`` setting a few hundred.

Start and gradient sign as the official ``inversefed`` (JonasGeiping/invertinggradients,
``inversefed/reconstruction_algorithms.py``, ``DEFAULT_CONFIG``: ``signed=False``, ``init='randn'``,
``boxed=True``): plain (unsigned) Adam steps from a standard normal start, clamped into the box
after each step. This module's former choices (signed gradients, a uniform [0, 1] start) are the
options ``signed=True`` and ``init="uniform"``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from grp_workbench.federated import FederatedError
from grp_workbench.federated.attacks.common import (
    cosine_loss,
    dummy_gradient,
    infer_labels,
    simulated_update,
    total_variation,
)


@dataclass
class InvertingGradientsConfig:
    iterations: int = 15_000
    lr: float = 0.1
    tv_weight: float = 1e-4
    restarts: int = 4
    signed: bool = False  # inversefed's default; True = sign of the gradient (breaching's IG config)
    init: str = "randn"  # randn (inversefed) | uniform (a uniform [0, 1] start)

    def __post_init__(self) -> None:
        if self.init not in ("randn", "uniform"):
            raise FederatedError(f"init={self.init!r} must be randn (inversefed's) or uniform.")


def reconstruct(model: nn.Module, target: list[torch.Tensor], batch_size: int, image_shape: tuple[int, ...],
                config: InvertingGradientsConfig, generator: torch.Generator, defense: dict | None = None,
                labels: torch.Tensor | None = None, local_steps: int = 0,
                local_lr: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """With ``local_steps`` > 0 the target is a FedAvg update (new minus old weights after that many
    local SGD steps at ``local_lr``) and the dummy images are matched through the same steps
    (GIFD's ``FedAvgReconstructor``); labels are read off the update's last layer as from a gradient."""
    if local_steps:
        observe = functools.partial(simulated_update, model, local_steps=local_steps, lr=local_lr)
        label_source = [-t / local_lr for t in target]  # the update points against the mean gradient
    else:
        observe = functools.partial(dummy_gradient, model, defense=defense)
        label_source = target
    labels = infer_labels(label_source, batch_size) if labels is None else labels
    milestones = [int(config.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    best = None
    for _ in range(config.restarts):
        draw = torch.randn if config.init == "randn" else torch.rand
        images = draw((batch_size, *image_shape), generator=generator).requires_grad_(True)
        optimizer = torch.optim.Adam([images], lr=config.lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
        for _ in range(config.iterations):
            optimizer.zero_grad()
            loss = cosine_loss(observe(images, labels), target)
            loss = loss + config.tv_weight * total_variation(images)
            loss.backward()
            if config.signed:
                images.grad.sign_()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                images.clamp_(0, 1)
        final = cosine_loss([g.detach() for g in observe(images, labels)], target).item()
        if best is None or final < best[2]:
            best = (images.detach(), labels, final)
    return best[0], best[1], {"gradient_loss": best[2], "iterations": float(config.iterations * config.restarts)}
