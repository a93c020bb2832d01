"""Pieces every gradient-inversion attack shares: the victim's gradient as a function of dummy data,
gradient-matching losses, total variation, and analytic label inference.

The attacker knows the global weights (it sent them), the batch size, and the defense's public
parameters; for deterministic defenses (clipping, pruning) it applies them to its own dummy
gradients too (the adaptive attacker).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grp_workbench.federated.defenses import deterministic_part


def dummy_gradient(model: nn.Module, images: torch.Tensor, label_target: torch.Tensor,
                   defense: dict | None = None, create_graph: bool = True) -> list[torch.Tensor]:
    """∇_θ CE(model(images), labels), with a graph for optimizing the images unless ``create_graph``
    is off (gradient-free searches); ``label_target`` is hard labels (int) or soft label
    probabilities (float, DLG)."""
    logits = model(images)
    if label_target.dtype.is_floating_point:
        loss = torch.sum(-label_target * F.log_softmax(logits, dim=-1), dim=-1).mean()
    else:
        loss = F.cross_entropy(logits, label_target)
    gradient = list(torch.autograd.grad(loss, list(model.parameters()), create_graph=create_graph))
    if defense:
        gradient = deterministic_part(defense["name"], gradient, defense.get("clip_norm", 4.0),
                                      defense.get("prune_fraction", 0.2), defense.get("feature_mask"))
    return gradient


def euclidean_loss(gradient: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    return sum(((g - t) ** 2).sum() for g, t in zip(gradient, target))


def cosine_loss(gradient: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """1 − one global cosine similarity over all layers (Geiping et al.'s 'sim', GIFD's 'sim_cmpr0')."""
    dot = sum((g * t).sum() for g, t in zip(gradient, target))
    norm_g = torch.sqrt(sum(g.pow(2).sum() for g in gradient))
    norm_t = torch.sqrt(sum(t.pow(2).sum() for t in target))
    return 1 - dot / (norm_g * norm_t + 1e-12)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV: mean |dx| + mean |dy|."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return dx + dy


def infer_labels(target_gradient: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    """iDLG / GIFD's rule: the last layer's weight-gradient rows sum to (p_c − y_c)·Σh, negative only for
    labels in the batch (ReLU features h ≥ 0); take the ``batch_size`` most negative rows (distinct labels)."""
    last_weight_grad = target_gradient[-2]  # (classes, features); the bias gradient is [-1]
    return torch.argsort(last_weight_grad.sum(dim=1))[:batch_size]


def simulated_update(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, local_steps: int, lr: float,
                     create_graph: bool = True) -> list[torch.Tensor]:
    """The weight change ``local_steps`` full-batch SGD steps on (images, labels) would make, as a
    differentiable function of the images (inversefed's ``loss_steps`` with ``use_updates``, which
    GIFD's ``FedAvgReconstructor`` inverts)."""
    start = dict(model.named_parameters())
    params = dict(start)
    for _ in range(local_steps):
        loss = F.cross_entropy(torch.func.functional_call(model, params, (images,)), labels)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        params = {name: value - lr * grad for (name, value), grad in zip(params.items(), grads)}
    return [params[name] - start[name] for name in start]
