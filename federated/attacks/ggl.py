"""GGL (Li et al., CVPR 2022): gradient inversion by a gradient-free search in a GAN's latent space.

As GIFD's code runs it: CMA-ES (``optim='CMA-ES'``) over the latent z, ``num_sample`` candidates
asked per iteration, each scored by the squared-L2 gradient distance plus ``kld_weight`` times the
KL divergence between the empirical distribution of z's entries and N(0, 1); ``budget``
iterations; labels from the last layer's gradient. CMA-ES comes from the ``cma`` package (Hansen's
reference implementation; GGL used nevergrad's wrapper of the same algorithm). The official
defaults (GIFD's ``configs_biggan.yml``) are budget 800, 50 samples (the population) and 4
restarts, each an independent CMA-ES run from its own z0; the restart with the lowest gradient
distance is returned (``choose_optimal`` scores by the gradient cost alone, without the KLD term).
The ``quick`` setting uses fewer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from grp_workbench.federated.attacks.common import dummy_gradient, euclidean_loss, infer_labels


@dataclass
class GGLConfig:
    budget: int = 800  # CMA-ES iterations (GIFD's cma_budget)
    num_sample: int = 50  # candidates asked per iteration (CMA-ES population)
    kld_weight: float = 0.1
    sigma0: float = 1.0  # initial CMA-ES step size around z0 ~ N(0, I)
    restarts: int = 4  # independent CMA-ES runs (GIFD's restarts: 4); the lowest gradient distance wins


def latent_kld(z: torch.Tensor) -> torch.Tensor:
    """KL(N(mean(z), var(z)) || N(0, 1)) over the entries of each latent, summed over the batch."""
    mean, var = z.mean(dim=1), z.var(dim=1, unbiased=False)
    return (-0.5 * (1 + torch.log(var + 1e-12) - mean.pow(2) - var)).sum()


def reconstruct(model: nn.Module, target: list[torch.Tensor], batch_size: int, generator_net: nn.Module,
                config: GGLConfig, generator: torch.Generator, defense: dict | None = None,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    import cma

    labels = infer_labels(target, batch_size) if labels is None else labels
    z_dim = generator_net.z_dim

    def gradient_distance(z: torch.Tensor) -> torch.Tensor:
        gradient = dummy_gradient(model, generator_net(z), labels, defense, create_graph=False)
        return euclidean_loss(gradient, target)

    runs = []  # (gradient distance, latent) per restart
    for _ in range(config.restarts):
        z0 = torch.randn(batch_size * z_dim, generator=generator).numpy()
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        strategy = cma.CMAEvolutionStrategy(z0, config.sigma0, {"popsize": config.num_sample, "seed": seed,
                                                                "verbose": -9, "maxiter": config.budget})

        def score(flat: np.ndarray) -> float:
            z = torch.as_tensor(flat, dtype=torch.float32).view(batch_size, z_dim)
            return (gradient_distance(z) + config.kld_weight * latent_kld(z)).item()

        for _ in range(config.budget):
            candidates = strategy.ask()
            strategy.tell(candidates, [score(c) for c in candidates])
        best = torch.as_tensor(strategy.result.xbest if strategy.result.xbest is not None else strategy.mean,
                               dtype=torch.float32).view(batch_size, z_dim)
        runs.append((gradient_distance(best).item(), best))
    distance, best = min(runs, key=lambda run: run[0])
    with torch.no_grad():
        images = generator_net(best).clamp(0, 1)
    # one iteration = one candidate's gradient evaluation (restarts x CMA-ES generations x population)
    return images, labels, {"gradient_loss": distance,
                            "iterations": float(config.restarts * config.budget * config.num_sample)}
