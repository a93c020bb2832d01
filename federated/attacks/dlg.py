"""DLG (Zhu et al., NeurIPS 2019) and iDLG (Zhao et al., 2020).

DLG optimizes dummy images and dummy soft labels jointly with L-BFGS so that their gradient matches
the captured one in squared Euclidean distance. iDLG first reads the labels off the last layer's
gradient (``infer_labels``) and optimizes the images alone. Defaults from the papers / the DLG code
(mit-han-lab/dlg, ``main.py``: ``torch.optim.LBFGS([dummy_data, dummy_label])`` stepped 300 times):
L-BFGS lr 1, 300 iterations, images initialized from N(0, 1), and torch's default ``max_iter=20``
inner iterations per step, which the original leaves unset. (Before issue 19 this module set
``max_iter=1``, so the "paper" preset did a twentieth of the original's work.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from grp_workbench.federated.attacks.common import dummy_gradient, euclidean_loss, infer_labels


@dataclass
class DLGConfig:
    iterations: int = 300  # optimizer.step calls (the original's 300)
    inner_iterations: int = 20  # L-BFGS max_iter per step: torch's default, which mit-han-lab/dlg keeps
    lr: float = 1.0
    infer_labels: bool = False  # True = iDLG
    restarts: int = 1


def _one_restart(model: nn.Module, target: list[torch.Tensor], batch_size: int, image_shape: tuple[int, ...],
                 config: DLGConfig, generator: torch.Generator, defense: dict | None, num_classes: int,
                 labels_known: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    images = torch.randn((batch_size, *image_shape), generator=generator).requires_grad_(True)
    label_logits = torch.randn((batch_size, num_classes), generator=generator).requires_grad_(True)
    optimizer = torch.optim.LBFGS([images] if labels_known is not None else [images, label_logits], lr=config.lr,
                                  max_iter=config.inner_iterations, history_size=100)

    def label_target() -> torch.Tensor:
        return labels_known if labels_known is not None else label_logits.softmax(-1)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = euclidean_loss(dummy_gradient(model, images, label_target(), defense), target)
        loss.backward()
        return loss

    steps = 0
    while steps < config.iterations:
        steps += 1
        last_good = images.detach().clone(), label_logits.detach().clone()
        loss = optimizer.step(closure)
        if not (torch.isfinite(loss) and torch.isfinite(images).all() and torch.isfinite(label_logits).all()):
            # L-BFGS diverged (e.g. a clipped target gradient): keep the last finite iterate
            with torch.no_grad():
                images.copy_(last_good[0])
                label_logits.copy_(last_good[1])
            break
    gradient = [g.detach() for g in dummy_gradient(model, images, label_target(), defense)]
    final = euclidean_loss(gradient, target).item()
    labels = labels_known if labels_known is not None else label_logits.detach().argmax(-1)
    return images.detach().clamp(0, 1), labels, final if final == final else float("inf"), steps


def reconstruct(model: nn.Module, target: list[torch.Tensor], batch_size: int, image_shape: tuple[int, ...],
                config: DLGConfig, generator: torch.Generator, defense: dict | None = None,
                num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(images in [0, 1], labels, {"gradient_loss"}) of the restart with the lowest gradient loss."""
    labels_known = infer_labels(target, batch_size) if config.infer_labels else None
    runs = [_one_restart(model, target, batch_size, image_shape, config, generator, defense, num_classes,
                         labels_known) for _ in range(config.restarts)]
    images, labels, loss, _ = min(runs, key=lambda run: run[2])
    return images, labels, {"gradient_loss": loss, "iterations": float(sum(run[3] for run in runs))}
