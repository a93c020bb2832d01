"""The attacker's generative prior: a DCGAN on MNIST images that no client holds.

``workbench federated train-prior --set prior=in`` trains it on the 3,000 ``prior`` images of the
role split (federated/partition.py), the in-distribution case of GIFD; ``prior=ood`` keeps only
digits 0-4 of them, for attacking clients that hold 5-9 (GIFD's out-of-distribution claim). GIFD's
own experiments use BigGAN / StyleGAN2 weights that are downloaded; this project builds its prior
with a command instead, so it works offline.

``workbench federated train-gan`` trains the same DCGAN on the evaluation classifier's 8,000
training images (all ten digits; ``prior=train``), the model that generative unlearning
(federated/unlearning/) forgets a digit from; ``--set exclude=D`` leaves digit D out, the
retrain-from-scratch reference of unlearning. The classifier's 2,000 held-out images are never
seen by either, so they are the real side of every Fréchet distance.

The generator is a stack of blocks so that GIFD can search its intermediate feature domains:
``z (100) -> fc 128x7x7 -> up 64x14x14 -> up 32x28x28 -> image 1x28x28``; ``features(z, k)`` is the
output of the first ``k`` blocks and ``from_features(h, k)`` runs the rest. Images are
``(tanh + 1) / 2`` in [0, 1], the task model's input range.

Evaluation without any downloaded network: nearest-neighbour MSE between 1,000 samples and the
training images, both ways (``coverage_mse``: each real image to its closest sample, low when the
samples cover the data; ``fidelity_mse``: each sample to its closest real image, low when samples
look like data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grp_workbench.federated import FederatedError
from grp_workbench.federated.app import mnist_with_roles
from grp_workbench.harness.config import TrainConfig
from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.runs import RunDir
from grp_workbench.harness.trainer import MethodSpec

PRIORS = ("in", "ood", "train")
OOD_CLASSES = (0, 1, 2, 3, 4)


class Generator(nn.Module):
    def __init__(self, z_dim: int = 100, width: int = 32):
        super().__init__()
        self.z_dim = z_dim
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Linear(z_dim, 4 * width * 7 * 7), nn.Unflatten(1, (4 * width, 7, 7)),
                          nn.BatchNorm2d(4 * width), nn.ReLU()),
            nn.Sequential(nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU()),
            nn.Sequential(nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU()),
            nn.Sequential(nn.Conv2d(width, 1, 3, padding=1), nn.Tanh()),
        ])

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def features(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """The output of the first ``k`` blocks (``k = 0``: ``z`` itself)."""
        h = z
        for block in self.blocks[:k]:
            h = block(h)
        return h

    def from_features(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Images in [0, 1] from the output of block ``k``."""
        for block in self.blocks[k:]:
            h = block(h)
        return (h + 1) / 2

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.from_features(z, 0)


class Discriminator(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1).squeeze(1)


@dataclass
class PriorConfig(TrainConfig):
    prior: str = "in"  # in: every prior image; ood: digits 0-4 of them only; train: the classifier's 8,000
    data_dir: str | None = None  # MNIST IDX folder (default: $WORKBENCH_DATA/mnist, ../shared/datasets/mnist)
    role_seed: int = 0  # the role split shared with the Flower app (its `seed` setting)
    exclude: int = -1  # a digit (0-9) left out of the images; -1 keeps all ten
    z_dim: int = 100
    width: int = 32
    batch_size: int = 64
    lr: float = 2e-4  # Adam, betas (0.5, 0.999): the DCGAN paper's
    total_steps: int = 4_000  # generator updates
    eval_every: int = 1_000
    log_every: int = 100
    checkpoint_every: int = 1_000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prior not in PRIORS:
            raise FederatedError(f"prior={self.prior!r} must be one of {', '.join(PRIORS)}.")
        if not -1 <= self.exclude <= 9:
            raise FederatedError(f"exclude={self.exclude} must be a digit 0-9 (or -1 to keep every digit).")


def prior_images(config: PriorConfig) -> torch.Tensor:
    if config.prior == "train":
        from grp_workbench.federated.classifier import classifier_split

        (images, labels), _ = classifier_split(config.data_dir)
    else:
        data, roles = mnist_with_roles(config.data_dir or "", config.role_seed)
        index = torch.from_numpy(roles["prior"])
        images, labels = data.images[index], data.labels[index]
    if config.prior == "ood":
        keep = torch.isin(labels, torch.tensor(OOD_CLASSES))
        images, labels = images[keep], labels[keep]
    if config.exclude >= 0:
        images = images[labels != config.exclude]
    return images


def nearest_neighbour_mse(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """For every query image, the MSE to its closest key image."""
    q, k = queries.flatten(1), keys.flatten(1)
    distance = (q.pow(2).sum(1, keepdim=True) - 2 * q @ k.T + k.pow(2).sum(1)) / q.shape[1]
    return distance.min(dim=1).values.clamp_min(0)


class PriorTraining:
    """Non-saturating DCGAN: one discriminator and one generator step per update."""

    main_metric = "coverage_mse"
    higher_is_better = False

    def __init__(self, config: PriorConfig, policy: DevicePolicy):
        self.config, self.device = config, policy.device
        self.images = prior_images(config).to(self.device)
        self.generator = Generator(config.z_dim, config.width).to(self.device)
        self.discriminator = Discriminator(config.width).to(self.device)
        betas = (0.5, 0.999)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=betas)
        self.rng = torch.Generator(device=self.device).manual_seed(config.seed)

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.config.z_dim, generator=self.rng, device=self.device)

    def update(self) -> dict[str, float]:
        n = self.config.batch_size
        real = self.images[torch.randint(len(self.images), (n,), generator=self.rng, device=self.device)]
        self.generator.train()
        fake = self.generator(self._noise(n))
        d_loss = (F.binary_cross_entropy_with_logits(self.discriminator(real), torch.ones(n, device=self.device))
                  + F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()),
                                                       torch.zeros(n, device=self.device)))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), torch.ones(n, device=self.device))
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.generator.eval()
        samples = self.generator(torch.randn(1000, self.config.z_dim, device=self.device,
                                             generator=torch.Generator(device=self.device).manual_seed(12345)))
        return {"coverage_mse": nearest_neighbour_mse(self.images, samples).mean().item(),
                "fidelity_mse": nearest_neighbour_mse(samples, self.images).mean().item()}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.rng.set_state(state["rng"])


def load_gan(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Generator, Discriminator, dict]:
    """Generator and discriminator of a ``train-prior`` / ``train-gan`` run (its last checkpoint), in
    eval mode and frozen, with the run's config."""
    run = RunDir(run_dir)
    state = run.last_algorithm_state("trained GAN", "build one with `workbench federated train-gan --run-dir "
                                     f"{run_dir}` (or train-prior --set prior=in for the attacker's prior).")
    config = run.header["config"]
    generator = Generator(config["z_dim"], config["width"])
    discriminator = Discriminator(config["width"])
    try:
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
    except RuntimeError as err:
        raise FederatedError(f"the GAN checkpoint under {run_dir} does not fit the DCGAN its config.json describes "
                             f"(z_dim {config['z_dim']}, width {config['width']}): "
                             f"{str(err).splitlines()[0]}") from None
    frozen = [m.to(device).eval().requires_grad_(False) for m in (generator, discriminator)]
    return frozen[0], frozen[1], config


def load_generator(run_dir: str | Path, device: str | torch.device = "cpu") -> Generator:
    """The generator of a ``train-prior`` / ``train-gan`` run (its last checkpoint), in eval mode and frozen."""
    return load_gan(run_dir, device)[0]


def _task(config: PriorConfig) -> str:
    without = f"-without{config.exclude}" if config.exclude >= 0 else ""
    return f"mnist-prior-{config.prior}{without}" if config.prior != "train" else f"mnist-train{without}"


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": {"total_steps": 2_000, "eval_every": 500, "checkpoint_every": 500},
    "tiny": {"total_steps": 20, "eval_every": 10, "log_every": 10, "checkpoint_every": 10, "batch_size": 16},
}
@dataclass
class GanConfig(PriorConfig):
    prior: str = "train"  # the classifier's 8,000 training images, all ten digits (exclude= leaves one out)


SPEC = MethodSpec(name="dcgan-prior", config_cls=PriorConfig, presets=PRESETS, build=PriorTraining, task=_task,
                  preset_costs={"quick": "about 6 min on 2 CPU cores"})  # 367 s measured 2026-11-30
GAN_SPEC = MethodSpec(name="dcgan", config_cls=GanConfig, presets=PRESETS, build=PriorTraining, task=_task,
                      preset_costs={"paper": "about 12 min on 2 CPU cores", "quick": "about 6 min on 2 CPU cores"})
