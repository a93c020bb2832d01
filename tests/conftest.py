"""Shared test fixtures: a toy algorithm that exercises every part of the trainer in milliseconds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from grp_workbench.harness.config import TrainConfig
from grp_workbench.harness.data import EpochSampler
from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.trainer import MethodSpec


@dataclass
class ToyConfig(TrainConfig):
    lr: float = 0.05  # SGD step size
    batch_size: int = 16
    dropout: float = 0.2  # makes the result depend on the global torch RNG, as real methods do
    steps_per_update: int = 1  # >1 imitates an online method that reports environment steps
    total_steps: int = 60
    eval_every: int = 10
    log_every: int = 5
    checkpoint_every: int = 10


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's ~/.cache/workbench."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))


TOY_PRESETS = {"paper": {}, "quick": {"total_steps": 40}}


class ToyRegression:
    """Noisy linear regression with dropout: learns in a few steps, random in every part."""

    main_metric = "neg_mse"
    higher_is_better = True

    def __init__(self, config: ToyConfig, policy: DevicePolicy):
        data_gen = torch.Generator().manual_seed(1234)  # the data is fixed; the seed drives training
        self.x = torch.randn(256, 8, generator=data_gen)
        self.y = self.x @ torch.arange(1.0, 9.0) + 0.1 * torch.randn(256, generator=data_gen)
        self.model = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(8, 1))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=0.9)
        self.sampler = EpochSampler(256, config.batch_size, seed=config.seed)
        self.steps_per_update = config.steps_per_update

    def update(self) -> dict[str, float]:
        index = self.sampler.next()
        self.model.train()
        loss = ((self.model(self.x[index]).squeeze(1) - self.y[index]) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        out = {"loss": loss.item()}
        if self.steps_per_update > 1:
            out["steps"] = self.steps_per_update
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        mse = ((self.model(self.x).squeeze(1) - self.y) ** 2).mean().item()
        return {"neg_mse": -mse, "noise": torch.rand(1).item()}  # noise: global RNG must resume too

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])


TOY_SPEC = MethodSpec(name="toy", config_cls=ToyConfig, presets=TOY_PRESETS, build=ToyRegression,
                      task=lambda config: "linear")


def metric_rows(run_dir) -> list[dict[str, Any]]:
    """metrics.jsonl rows without the wall-clock fields, which differ between identical runs."""
    from grp_workbench.harness.runs import RunDir

    rows = RunDir(run_dir).read_metrics()
    return [{k: v for k, v in row.items() if k not in ("time", "steps_per_s")} for row in rows]


@pytest.fixture
def toy_spec() -> MethodSpec:
    return TOY_SPEC
