"""Reconstruction quality on [0, 1] images: PSNR, SSIM (pytorch-msssim), label recovery, and the
evaluation classifier's accuracy on the reconstructions (does a reconstruction still show its digit?).

Batches are compared after matching each reconstruction to its closest original (by MSE, Hungarian
assignment), since an attacker recovers a batch as a set, not in the client's order.
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_msssim import ssim
from scipy.optimize import linear_sum_assignment


def match_order(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Indices ``order`` such that ``reconstructed[order][i]`` is matched to ``original[i]``."""
    cost = ((original[:, None] - reconstructed[None]) ** 2).flatten(2).mean(2).cpu().numpy()
    _, columns = linear_sum_assignment(cost)
    return torch.as_tensor(columns)


def psnr(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB on [0, 1] images (clamped), 10·log10(1 / MSE)."""
    mse = ((reconstructed.clamp(0, 1) - original) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def ssim_per_image(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    window = 7 if min(original.shape[-2:]) < 32 else 11  # a 28×28 image needs a smaller window than 11
    return ssim(reconstructed.clamp(0, 1), original, data_range=1.0, size_average=False, win_size=window)


@torch.no_grad()
def classifier_accuracy(classifier: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` that ``classifier`` assigns to ``labels`` (the true labels, in matched order)."""
    classifier.eval()
    return (classifier(images.clamp(0, 1)).argmax(1) == labels).float().mean().item()


def reconstruction_metrics(reconstructed: torch.Tensor, original: torch.Tensor, labels_true: torch.Tensor | None = None,
                           labels_recovered: torch.Tensor | None = None,
                           classifier: torch.nn.Module | None = None) -> dict[str, float]:
    order = match_order(reconstructed, original)
    matched = reconstructed[order]
    metrics = {"psnr": psnr(matched, original).mean().item(), "ssim": ssim_per_image(matched, original).mean().item()}
    if labels_true is not None and labels_recovered is not None:
        true = np.sort(labels_true.cpu().numpy())
        found = np.sort(labels_recovered.cpu().numpy())
        metrics["label_accuracy"] = float((true == found).mean())  # as multisets: order-free
    if classifier is not None and labels_true is not None:
        metrics["classifier_accuracy"] = classifier_accuracy(classifier, matched, labels_true)
    return metrics
