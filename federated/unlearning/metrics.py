"""Metrics of generative unlearning, shared by the GAN (Adapt-then-Unlearn) and diffusion (SFD) methods.

Every metric reads generated images through the workbench's evaluation classifier (the SmallCNN of
``workbench federated train-classifier``, 98.9% held out), because no Inception weights can be
downloaded here:

* ``pul``: the percentage of unlearning of Adapt-then-Unlearn (``eval_multiple_gan.py``):
  ``100 * (N_old - N_new) / N_old``, where N counts samples the classifier labels as the forgotten
  class among images of the SAME fixed latents from the original and the unlearned generator.
* ``frechet_distance``: the Fréchet distance between Gaussian fits of two feature sets, computed by
  torchmetrics' ``FrechetInceptionDistance`` with a custom feature extractor. On the classifier's
  128-d penultimate features it is *not* the Inception FID of the papers, and every table names it
  "classifier-feature FD" (the ``fid`` records hold it). Numbers are comparable only within this
  workbench, at the same sample count.
* ``retained_balance``: normalised entropy of the classifier's labels over the retained classes
  (1.0: the nine other digits equally often; lower: unlearning collapsed some of them).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from grp_workbench.federated import FederatedError

NUM_CLASSES = 10


class _GivenFeatures(nn.Module):
    """The identity, so that torchmetrics' Fréchet distance runs on features computed elsewhere."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, d) feature sets (torchmetrics' FID formula,
    float64 sums, eigenvalues of the covariance product)."""
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise FederatedError(f"feature sets must be (N, d) with the same d; got {tuple(features_a.shape)} and "
                             f"{tuple(features_b.shape)}.")
    if min(len(features_a), len(features_b)) < 2:
        raise FederatedError("a Fréchet distance needs at least 2 samples on each side.")
    metric = FrechetInceptionDistance(feature=_GivenFeatures(features_a.shape[1]), normalize=False)
    metric.update(features_b.double().cpu(), real=True)
    metric.update(features_a.double().cpu(), real=False)
    return float(metric.compute())


@torch.no_grad()
def classify(classifier: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, penultimate features) of ``images`` in [0, 1] under the evaluation classifier."""
    labels, features = [], []
    device = next(classifier.parameters()).device
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device)
        labels.append(classifier(batch).argmax(1).cpu())
        features.append(classifier.embed(batch).float().cpu())
    return torch.cat(labels), torch.cat(features)


def check_forget_class(forget: int) -> int:
    if not 0 <= int(forget) < NUM_CLASSES:
        raise FederatedError(f"forget={forget} is not an MNIST class; choose a digit 0-9.")
    return int(forget)


def pul(old_labels: torch.Tensor, new_labels: torch.Tensor, forget: int) -> float:
    """Percentage of unlearning: the drop in the forgotten class's count between the original and the
    unlearned generator's samples of the same latents, relative to the original's count."""
    n_old = int((old_labels == forget).sum())
    n_new = int((new_labels == forget).sum())
    if n_old == 0:
        raise FederatedError(f"the original generator produced no sample the classifier labels {forget} among "
                             f"{len(old_labels)}; PUL is undefined. Use more samples or a better generator.")
    return 100.0 * (n_old - n_new) / n_old


def label_shares(labels: torch.Tensor) -> list[float]:
    """The share of each class among the classifier's labels."""
    counts = torch.bincount(labels, minlength=NUM_CLASSES).double()
    return (counts / counts.sum().clamp_min(1)).tolist()


def retained_balance(labels: torch.Tensor, forget: int) -> float:
    """Entropy of the label distribution over the retained classes, divided by its maximum ln(9)."""
    keep = labels[labels != forget]
    counts = torch.bincount(keep, minlength=NUM_CLASSES).double()
    counts = torch.cat([counts[:forget], counts[forget + 1:]])
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return entropy / math.log(NUM_CLASSES - 1)
