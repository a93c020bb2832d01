"""The small CNN: the federated task model and the evaluation classifier for generated images."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv3×3(w)-pool-conv3×3(2w)-pool-fc(hidden)-fc(classes) with ReLU, for 1×28×28 inputs.

    About 0.4M parameters at the default width: accurate enough on MNIST (≥ 98% held out) and
    small enough for per-example gradient inversion on a CPU.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, hidden: int = 128,
                 dropout: float = 0.25, image_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * width * (image_size // 4) ** 2, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (``hidden``-dimensional), for feature distances such as MNIST-FID."""
        return self.head[:-2](self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """ResNet's basic block (two 3×3 convolutions and a shortcut), GroupNorm in place of BatchNorm."""

    def __init__(self, in_channels: int, channels: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.GroupNorm(groups, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet (He et al. 2016, section 4.2: a 3×3 stem and stages of basic blocks that
    halve the resolution and double the width), the deeper victim of the gradient-inversion benchmark.

    MNIST's 28×28 digits are zero-padded to 32×32 (as LeNet-5 read them), the input size of the
    paper's CIFAR ResNets, so the clients' data, the priors and the attacks stay at 28×28.
    Departures from the GIFD paper's ResNet-18, and why: three stages of ``blocks`` blocks at widths
    16-32-64 (ResNet-14 by default, about 0.18M parameters; ResNet-18's 11M makes one inversion
    hours of CPU), and GroupNorm instead of BatchNorm: the federated app runs the model in eval mode
    so that an update is a function of the client's data alone, and BatchNorm in eval mode with
    running statistics nobody fitted is a fixed affine map, while in train mode it couples the
    examples of a batch (a separate effect on leakage).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, blocks: int = 2,
                 groups: int = 4, image_size: int = 28):
        super().__init__()
        pad = (32 - image_size) // 2
        stem = [nn.ZeroPad2d(max(pad, 0)), nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                nn.GroupNorm(groups, width), nn.ReLU()]
        layers, channels = [], width
        for stage in range(3):
            out_channels = width * 2 ** stage
            for block in range(blocks):
                layers.append(BasicBlock(channels, out_channels, 2 if stage > 0 and block == 0 else 1, groups))
                channels = out_channels
        self.features = nn.Sequential(*stem, *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


VICTIM_MODELS = {"smallcnn": lambda: SmallCNN(dropout=0.0), "resnet": SmallResNet}
"""The federated task models by name (without dropout: a client's gradient is a function of its data)."""
