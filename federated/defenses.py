"""Client-side defenses on the shared update (a gradient in FedSGD, a weight delta in FedAvg).

* ``noise``: Gaussian noise of std ``noise_std`` on every tensor (GIFD/GGL's additive_noise, 0.01);
* ``clip``: scale the whole update to global L2 norm ≤ ``clip_norm`` (gradient_clipping, 4);
* ``clip+noise``: both, the local-DP recipe of Flower's ``LocalDpMod`` (clip, then Gaussian noise);
* ``prune``: per tensor, zero the ``prune_fraction`` of entries smallest in magnitude
  (gradient_compression, 20%).

* ``soteria`` (Sun et al., CVPR 2021; GIFD's ``defense.py::perturb_representation``): for every
  feature r_f of the representation that enters the model's last linear layer, the ratio
  ||∂r_f/∂x|| / r_f summed over the batch; the ``soteria_rate`` percent of features with the
  smallest ratio are pruned from the last layer's weight gradient (its columns are zeroed).
  FedSGD only (it perturbs one gradient computed on known inputs); default rate 10, the
  function's default in GIFD's ``defense.py``. As there, a feature is pruned when its score is
  strictly below the percentile: features inactive on the whole batch score 0 and tie, so on an
  untrained model (about half the features inactive on a small batch) rates under ~50% prune
  nothing (those columns are zero already).

* ``dp``: local differential privacy as Flower's ``LocalDpMod`` (``flwr/client/mod/localdp_mod.py``):
  the update (new minus old weights) is clipped to L2 norm ``clip_norm`` with Flower's own
  ``clip_inputs_inplace`` (as its ``compute_clip_model_update``), then Gaussian noise of std
  ``sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon`` (``add_localdp_gaussian_noise_to_params``;
  sensitivity = the clipping norm) is added: an (epsilon, delta)-DP release of each update. The
  mod itself is not mounted because it converts messages through Flower's legacy FitIns records
  (our app speaks the Message API with ``arrays``), and because it draws from NumPy's global
  generator; the noise here comes from the client's OS-entropy generator. epsilon is per released
  update (one round); composition over rounds is not accounted.

``clip`` and ``prune`` are deterministic given the update, so an adaptive attacker applies them to
its own dummy gradients too (``deterministic_part``); noise it cannot reproduce. Against
``soteria`` the adaptive attacker zeroes the same columns of its dummy last-layer gradient, read
off the target (columns that are zero there), as GIFD's attack code does
(``mask = input_gradient[0][-2][0] != 0``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from grp_workbench.federated import FederatedError

DEFENSES = ("none", "noise", "clip", "clip+noise", "prune", "soteria", "dp")


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
                       prune_fraction: float = 0.2, feature_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The part of ``defense`` an attacker can replay on its own gradients (identity for noise;
    for soteria the feature mask read off the target gradient)."""
    if defense in ("clip", "clip+noise"):
        return clip_global_norm(update, clip_norm)
    if defense == "prune":
        return prune_smallest(update, prune_fraction)
    if defense == "soteria" and feature_mask is not None:
        return [*update[:-2], update[-2] * feature_mask, update[-1]]
    return update


def local_dp_std(sensitivity: float, epsilon: float, delta: float) -> float:
    """The Gaussian mechanism's std in Flower's ``add_localdp_gaussian_noise_to_params``."""
    if sensitivity <= 0 or epsilon <= 0 or not 0 < delta < 1:
        raise FederatedError(f"local DP needs clip_norm > 0, dp_epsilon > 0 and 0 < dp_delta < 1 (got {sensitivity}, "
                             f"{epsilon}, {delta}).")
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def local_dp(update: list[torch.Tensor], generator: torch.Generator, clip_norm: float, epsilon: float,
             delta: float) -> list[torch.Tensor]:
    """Clip the update with Flower's ``clip_inputs_inplace`` (what ``compute_clip_model_update`` does
    to new minus old weights), then add (epsilon, delta) noise."""
    from flwr.supercore.differential_privacy import clip_inputs_inplace

    clipped = [t.detach().cpu().numpy().astype("float64") for t in update]
    clip_inputs_inplace(clipped, clip_norm)
    std = local_dp_std(clip_norm, epsilon, delta)
    return [torch.as_tensor(a, dtype=t.dtype) + std * torch.randn(t.shape, generator=generator, dtype=t.dtype)
            for a, t in zip(clipped, update)]


def soteria_mask(model: nn.Module, images: torch.Tensor, rate: float = 10.0) -> torch.Tensor:
    """Soteria's 0/1 mask over the features entering the model's last linear layer: 0 for the
    ``rate`` percent with the smallest summed ||∂r_f/∂x|| / r_f (GIFD ``perturb_representation``)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured: dict[str, torch.Tensor] = {}
    handle = last.register_forward_hook(lambda module, inputs, output: captured.__setitem__("r", inputs[0]))
    x = images.detach().clone().requires_grad_(True)
    try:
        model(x)
    finally:
        handle.remove()
    features = captured["r"]
    ratios = torch.zeros_like(features)
    for f in range(features.shape[1]):
        (grad_x,) = torch.autograd.grad(features[:, f].sum(), x, retain_graph=True)
        ratios[:, f] = grad_x.flatten(1).norm(dim=1) / (features[:, f].detach() + 1e-10)
    score = ratios.sum(0).abs()
    threshold = torch.quantile(score, rate / 100.0)
    return (score >= threshold).to(features.dtype)  # pruned: strictly below, as np.where(x < thresh, 0, 1)


def soteria(model: nn.Module, images: torch.Tensor, gradient: list[torch.Tensor], rate: float = 10.0
            ) -> list[torch.Tensor]:
    """The gradient with Soteria's pruned features zeroed in the last layer's weight gradient."""
    return deterministic_part("soteria", gradient, feature_mask=soteria_mask(model, images, rate))


def defend(defense: str, update: list[torch.Tensor], generator: torch.Generator, noise_std: float = 0.01,
           clip_norm: float = 4.0, prune_fraction: float = 0.2) -> list[torch.Tensor]:
    if defense not in DEFENSES:
        raise FederatedError(f"defense={defense!r} is not one of {', '.join(DEFENSES)}.")
    if defense == "soteria":
        raise FederatedError("defense=soteria needs the model and the client's images: call soteria(model, images, "
                             "gradient) on a FedSGD gradient.")
    if defense == "dp":
        raise FederatedError("defense=dp needs epsilon and delta: call local_dp(update, generator, clip_norm, "
                             "epsilon, delta).")
    update = deterministic_part(defense, update, clip_norm, prune_fraction)
    if defense in ("noise", "clip+noise"):
        update = [t + noise_std * torch.randn(t.shape, generator=generator, dtype=t.dtype) for t in update]
    return update
