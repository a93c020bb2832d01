"""Supervised training of the small CNN on MNIST: the harness's first real consumer.

``workbench federated train-classifier`` trains it on a stratified 80% of the 10k MNIST test
images and reports accuracy on the held-out 20% (2,000 images). The checkpoint serves later as the
federated task model's centralised reference and as the evaluation classifier for generated
images (``SmallCNN.embed`` gives the features for MNIST-FID).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from grp_workbench.federated import FederatedError
from grp_workbench.federated.data import load_mnist, stratified_split
from grp_workbench.federated.models import SmallCNN
from grp_workbench.harness.config import TrainConfig
from grp_workbench.harness.data import EpochSampler, find_dataset_dir
from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.trainer import MethodSpec


@dataclass
class ClassifierConfig(TrainConfig):
    data_dir: str | None = None  # MNIST IDX folder; unset: $WORKBENCH_DATA/mnist, ../shared/datasets/mnist, digits
    holdout_fraction: float = 0.2  # stratified held-out split: 2,000 of the 10k MNIST test images
    split_seed: int = 0  # fixed across training seeds so that every seed is scored on the same images
    width: int = 32  # channels of the first conv layer (the second has twice as many)
    hidden: int = 128  # penultimate feature size
    dropout: float = 0.25
    batch_size: int = 128
    lr: float = 1e-3  # Adam, cosine-decayed to 0 over total_steps
    weight_decay: float = 0.0
    max_shift: int = 2  # random translation augmentation, in pixels
    total_steps: int = 3_000
    eval_every: int = 250
    log_every: int = 50
    checkpoint_every: int = 250

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size <= 0 or self.lr <= 0 or not 0 <= self.dropout < 1 or self.max_shift < 0:
            raise FederatedError(
                f"classifier config out of range: batch_size={self.batch_size} (>0), lr={self.lr} (>0), "
                f"dropout={self.dropout} (in [0, 1)), max_shift={self.max_shift} (>=0)."
            )


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": {"total_steps": 1_500, "eval_every": 250, "checkpoint_every": 250},
    # Seconds, for tests and smoke runs; not expected to reach 98%.
    "tiny": {"total_steps": 40, "eval_every": 20, "log_every": 10, "checkpoint_every": 20, "batch_size": 32},
}


def classifier_split(data_dir: str | None = None, holdout_fraction: float = 0.2, split_seed: int = 0
                     ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((train images, labels), (held-out images, labels)): the classifier's stratified split of the
    MNIST images (8,000 / 2,000 at the defaults). Generative models that this classifier evaluates
    train on the first part only, so the held-out part is unseen by both."""
    data = load_mnist(data_dir)
    train_idx, held_idx = stratified_split(data.labels, holdout_fraction, split_seed)
    return (data.images[train_idx], data.labels[train_idx]), (data.images[held_idx], data.labels[held_idx])


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]², filling with zeros."""
    if max_shift == 0:
        return images
    n, _, h, w = images.shape
    device = images.device
    # Offsets come from a CPU generator so that the same seed gives the same augmentation on any device.
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator).to(device)
    padded = F.pad(images, (max_shift,) * 4)
    rows = (torch.arange(h, device=device) + max_shift)[None, :] - shifts[:, :1]  # (n, h)
    cols = (torch.arange(w, device=device) + max_shift)[None, :] - shifts[:, 1:]  # (n, w)
    batch = torch.arange(n, device=device)[:, None, None]
    return padded[:, 0][batch, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


class ImageClassifier:
    """Cross-entropy training of ``SmallCNN`` with Adam and a cosine learning-rate schedule."""

    main_metric = "accuracy"
    higher_is_better = True

    def __init__(self, config: ClassifierConfig, policy: DevicePolicy):
        self.config, self.policy = config, policy
        (train_x, train_y), (test_x, test_y) = classifier_split(config.data_dir, config.holdout_fraction,
                                                                config.split_seed)
        device = policy.device
        self.train_x, self.train_y = train_x.to(device), train_y.to(device)
        self.test_x, self.test_y = test_x.to(device), test_y.to(device)
        self.model = SmallCNN(width=config.width, hidden=config.hidden, dropout=config.dropout).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.total_steps)
        self.scaler = policy.grad_scaler()
        self.sampler = EpochSampler(len(self.train_y), config.batch_size, seed=config.seed)
        self.augment_generator = torch.Generator().manual_seed(config.seed + 1)

    def update(self) -> dict[str, float]:
        index = self.sampler.next().to(self.policy.device)
        images = random_shift(self.train_x[index], self.config.max_shift, self.augment_generator)
        labels = self.train_y[index]
        self.model.train()
        with self.policy.autocast():
            logits = self.model(images)
            loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        accuracy = (logits.argmax(1) == labels).float().mean()
        return {"loss": loss.item(), "accuracy": accuracy.item(), "lr": self.scheduler.get_last_lr()[0]}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        correct, loss_sum = 0, 0.0
        for start in range(0, len(self.test_y), 1000):
            images, labels = self.test_x[start : start + 1000], self.test_y[start : start + 1000]
            with self.policy.autocast():
                logits = self.model(images).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
        return {"accuracy": correct / len(self.test_y), "loss": loss_sum / len(self.test_y)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "augment_generator": self.augment_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        self.augment_generator.set_state(state["augment_generator"])


SPEC = MethodSpec(
    name="classifier",
    config_cls=ClassifierConfig,
    presets=PRESETS,
    build=ImageClassifier,
    task=lambda config: "mnist" if find_dataset_dir("mnist", config.data_dir) else "digits",
)
