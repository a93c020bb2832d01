"""DRED's generative model of levels: a VAE trained on the training levels, decoded along SLERP paths.

The paper's VAE is a graph VAE (GIN encoder, multi-head MLP decoder, latent 1024); this is a grid
(CNN) VAE, which the docs state and whose reconstruction accuracy is reported by its evaluation:

* input: one-hot planes of the cell kinds (empty, wall, lava, moss) plus a start plane and a goal
  plane, 6 x H x W;
* encoder: conv 3x3 (32) -> conv 3x3 stride 2 (64) -> linear 256 -> mean and log-variance (``latent``);
* decoder: linear -> 64 x ceil(H/2) x ceil(W/2) -> transposed conv to 32 x H x W -> three heads: cell
  kinds per cell, the goal cell (one categorical over cells) and the start cell;
* loss: the ELBO, cross-entropies summed over cells plus ``beta`` x KL (the paper weighs its heads
  0.04 / 0.013 / 0.013 with beta 0.0448 for its graph decoder; here plain ELBO weights).

Decoding masks the goal to passable cells of the decoded layout and the start to passable cells other
than the goal (the paper conditions its goal and start heads the same way). Generated levels need not
be solvable; DRED gives never-solved generated levels zero priority.

``interpolate``: 2 x num_pairs training levels, paired (i, 2p-1-i); their latent means are joined by
SLERP (plain interpolation when their cosine exceeds 0.955) at ``interpolations`` points from 0 to 1,
stds interpolated linearly, z = mean + std * eps; each new level takes the structure of the nearer parent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from grp_workbench.envs.levels import LAVA, PASSABLE, WALL, Level, is_solvable, load_levels
from grp_workbench.harness.config import TrainConfig
from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.runs import RunDir
from grp_workbench.harness.trainer import MethodSpec

N_KINDS = 4


def levels_to_tensor(levels: list[Level]) -> torch.Tensor:
    grids = torch.as_tensor(np.stack([lv.grid for lv in levels]), dtype=torch.long)
    planes = F.one_hot(grids, N_KINDS).permute(0, 3, 1, 2).float()
    marks = torch.zeros(len(levels), 2, *grids.shape[1:])
    for i, lv in enumerate(levels):
        marks[i, 0][lv.start] = 1.0
        marks[i, 1][lv.goal] = 1.0
    return torch.cat([planes, marks], dim=1)


class LevelVAE(nn.Module):
    def __init__(self, size: int = 13, latent: int = 64):
        super().__init__()
        self.size, self.latent, half = size, latent, (size + 1) // 2
        self.half = half
        self.encoder = nn.Sequential(
            nn.Conv2d(N_KINDS + 2, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(64 * half * half, 256), nn.ReLU(), nn.Linear(256, 2 * latent))
        self.decoder = nn.Sequential(
            nn.Linear(latent, 256), nn.ReLU(), nn.Linear(256, 64 * half * half), nn.ReLU(),
            nn.Unflatten(1, (64, half, half)),
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=(size + 1) % 2), nn.ReLU())
        self.kind_head = nn.Conv2d(32, N_KINDS, 1)
        self.goal_head = nn.Conv2d(32, 1, 1)
        self.start_head = nn.Conv2d(32, 1, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return mean, log_var.clamp(-10, 10)

    def decode_logits(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.decoder(z)
        return self.kind_head(h), self.goal_head(h).flatten(1), self.start_head(h).flatten(1)

    def loss(self, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
        mean, log_var = self.encode(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        kinds, goal, start = self.decode_logits(z)
        kind_target = x[:, :N_KINDS].argmax(1)
        start_target, goal_target = x[:, N_KINDS].flatten(1).argmax(1), x[:, N_KINDS + 1].flatten(1).argmax(1)
        layout = F.cross_entropy(kinds, kind_target, reduction="none").flatten(1).sum(1).mean()
        goal_loss = F.cross_entropy(goal, goal_target)
        start_loss = F.cross_entropy(start, start_target)
        kl = (-0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum(1)).mean()
        total = layout + goal_loss + start_loss + beta * kl
        return total, {"layout": layout.item(), "goal": goal_loss.item(), "start": start_loss.item(), "kl": kl.item()}

    @torch.no_grad()
    def decode_levels(self, z: torch.Tensor, structures: list[str] | None = None,
                      generator: torch.Generator | None = None) -> list[Level]:
        """Levels from latents: with a ``generator``, every cell's kind, then the goal among passable
        cells, then the start among the rest are *sampled* from the decoder's categorical outputs, as
        the official generator decodes (``sample=True``); without one, the most likely of each."""
        kinds, goal_logits, start_logits = self.decode_logits(z)
        if generator is None:
            grids = kinds.argmax(1).numpy().astype(np.uint8)
        else:
            probabilities = torch.softmax(kinds, 1).movedim(1, -1).reshape(-1, kinds.shape[1])
            grids = torch.multinomial(probabilities, 1, generator=generator).view(kinds.shape[0], *kinds.shape[2:])
            grids = grids.numpy().astype(np.uint8)

        def pick(logits: torch.Tensor, allowed: np.ndarray) -> int:
            masked = torch.where(torch.from_numpy(allowed), logits, torch.tensor(-torch.inf))
            if generator is None:
                return int(masked.argmax())
            return int(torch.multinomial(torch.softmax(masked, 0), 1, generator=generator))

        levels = []
        for i, grid in enumerate(grids):
            passable = np.isin(grid, PASSABLE).ravel()
            if passable.sum() < 2:  # too few open cells to place start and goal: open two
                order = np.argsort(-goal_logits[i].numpy())[:2]
                grid.flat[order] = 0
                passable = np.isin(grid, PASSABLE).ravel()
            goal = pick(goal_logits[i].flatten(), passable)
            allowed = passable.copy()
            allowed[goal] = False
            start = pick(start_logits[i].flatten(), allowed)
            levels.append(Level(grid, divmod(start, self.size), divmod(goal, self.size),
                                structures[i] if structures else "generated"))
        return levels

    @torch.no_grad()
    def encode_levels(self, levels: list[Level]) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.encode(levels_to_tensor(levels))
        return mean, torch.exp(0.5 * log_var)

    @torch.no_grad()
    def interpolate(self, latents: tuple[torch.Tensor, torch.Tensor], levels: list[Level], num_pairs: int,
                    interpolations: int, generator: torch.Generator,
                    sample: bool = True) -> tuple[list[Level], list[tuple[int, int]]]:
        means, stds = latents
        chosen = torch.randperm(len(levels), generator=generator)[: 2 * num_pairs].tolist()
        zs, parents, structures = [], [], []
        for p in range(num_pairs):
            a, b = chosen[p], chosen[2 * num_pairs - 1 - p]
            for t in np.linspace(0.0, 1.0, interpolations):
                mean = slerp(means[a], means[b], float(t))
                std = (1 - t) * stds[a] + t * stds[b]
                zs.append(mean + std * torch.randn(mean.shape, generator=generator))
                parents.append((a, b))
                structures.append(levels[a if t <= 0.5 else b].structure)
        return self.decode_levels(torch.stack(zs), structures, generator if sample else None), parents


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation; linear when the vectors are nearly parallel (cos > 0.955, as DRED)."""
    cos = torch.dot(a, b) / (a.norm() * b.norm() + 1e-12)
    if cos > 0.955:
        return (1 - t) * a + t * b
    omega = torch.arccos(cos.clamp(-1, 1))
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


@dataclass
class LevelVAEConfig(TrainConfig):
    levels: str = ""  # training level set; default envs/level_sets/train.npz
    eval_levels: str = ""  # held-out levels for reconstruction accuracy; default envs/level_sets/test.npz
    latent: int = 64
    beta: float = 1.0
    lr: float = 3.976e-4  # the paper's Adam learning rate
    batch_size: int = 64  # the paper's
    total_steps: int = 8_000  # gradient steps (the paper: 200 epochs of 512 levels = 1,600)
    eval_every: int = 1_000
    log_every: int = 100
    checkpoint_every: int = 1_000


class LevelVAETraining:
    main_metric = "train/cell_accuracy"
    higher_is_better = True

    def __init__(self, config: LevelVAEConfig, policy: DevicePolicy):
        from grp_workbench.rl.ued.ppo import LEVEL_SETS

        self.config = config
        self.levels = load_levels(config.levels or LEVEL_SETS / "train.npz")
        eval_path = Path(config.eval_levels) if config.eval_levels else LEVEL_SETS / "test.npz"
        self.eval_levels = load_levels(eval_path) if eval_path.is_file() else []
        self.data = levels_to_tensor(self.levels)
        self.model = LevelVAE(self.levels[0].grid.shape[0], config.latent)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(config.seed)

    def update(self) -> dict[str, float]:
        batch = self.data[torch.randint(len(self.data), (self.config.batch_size,), generator=self.generator)]
        self.model.train()
        loss, parts = self.model.loss(batch, self.config.beta)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), **parts}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        metrics = {}
        for name, levels in (("train", self.levels), ("test", self.eval_levels)):
            if not levels:
                continue
            mean, _ = self.model.encode(levels_to_tensor(levels))
            decoded = self.model.decode_levels(mean)
            metrics[f"{name}/cell_accuracy"] = float(np.mean([(d.grid == lv.grid).mean()
                                                              for d, lv in zip(decoded, levels)]))
            metrics[f"{name}/goal_accuracy"] = float(np.mean([d.goal == lv.goal for d, lv in zip(decoded, levels)]))
            metrics[f"{name}/start_accuracy"] = float(np.mean([d.start == lv.start for d, lv in zip(decoded, levels)]))
            metrics[f"{name}/solvable"] = float(np.mean([is_solvable(d) for d in decoded]))
        samples = self.model.decode_levels(torch.randn(64, self.config.latent, generator=self.generator))
        metrics["prior_samples/solvable"] = float(np.mean([is_solvable(d) for d in samples]))
        metrics["prior_samples/lava_fraction"] = float(np.mean([(d.grid == LAVA).mean() for d in samples]))
        metrics["prior_samples/wall_fraction"] = float(np.mean([(d.grid == WALL).mean() for d in samples]))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


def load_level_vae(run_dir: str | Path) -> LevelVAE:
    run = RunDir(run_dir)
    state = run.last_algorithm_state("trained level VAE", f"train one with `workbench rl train level-vae "
                                     f"--run-dir {run_dir}`.")
    config = run.header["config"]
    levels = load_levels(config["levels"] or Path(__file__).resolve().parents[2] / "envs/level_sets/train.npz")
    model = LevelVAE(levels[0].grid.shape[0], config["latent"])
    model.load_state_dict(state["model"])
    return model.eval()


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": {"total_steps": 3_000, "eval_every": 1_000, "checkpoint_every": 1_000},
    "tiny": {"total_steps": 20, "eval_every": 10, "log_every": 10, "checkpoint_every": 10, "batch_size": 8},
}
def _inputs(config: LevelVAEConfig) -> dict[str, Any]:
    from grp_workbench.rl.ued.ppo import LEVEL_SETS

    return {"training levels": Path(config.levels) if config.levels else LEVEL_SETS / "train.npz",
            "held-out levels": Path(config.eval_levels) if config.eval_levels else LEVEL_SETS / "test.npz"}


SPEC = MethodSpec(name="level-vae", config_cls=LevelVAEConfig, presets=PRESETS, build=LevelVAETraining,
                  task=lambda config: "cave_escape", inputs=_inputs,
                  preset_costs={"quick": "about 5 min on 2 CPU cores"})  # 271 s measured 2026-11-30
