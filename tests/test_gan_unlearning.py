"""Adapt-then-Unlearn and the shared unlearning metrics (federated/unlearning/)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from grp_workbench.federated import FederatedError
from grp_workbench.federated.unlearning import gan as gan_unlearning
from grp_workbench.federated.unlearning.gan import (
    SPEC,
    GanUnlearning,
    UnlearningInputs,
    UnlearningReference,
    estimate_fisher,
    ewc_penalty,
    extrapolate,
    parameter_distance,
    repulsion,
)
from grp_workbench.federated.unlearning.metrics import frechet_distance, pul, retained_balance
from grp_workbench.harness.config import build_config
from grp_workbench.harness.trainer import train


# ---- the pieces --------------------------------------------------------------------------------------
def test_ewc_penalty_is_zero_at_the_anchor_and_grows_with_distance():
    anchor = [torch.tensor([1.0, -2.0]), torch.tensor([[0.5]])]
    fisher = [torch.tensor([2.0, 1.0]), torch.tensor([[4.0]])]
    assert ewc_penalty(anchor, anchor, fisher, 10.0).item() == 0.0
    values = [ewc_penalty([a + step for a in anchor], anchor, fisher, 10.0).item() for step in (0.1, 0.2, 0.4)]
    assert values[0] < values[1] < values[2]
    # (lambda/2) sum F d^2 by hand: 5 * (2 + 1 + 4) * 0.01
    assert values[0] == pytest.approx(5 * 7 * 0.01)


class _Line(nn.Module):
    """G(z) = w1 * z + w2, one pixel: two parameters."""

    z_dim = 1

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.tensor(0.7))
        self.w2 = nn.Parameter(torch.tensor(-0.3))

    def forward(self, z):
        return self.w1 * z + self.w2


def test_fisher_matches_a_hand_computation_on_a_two_parameter_model():
    z = torch.tensor([[1.0], [2.0], [-3.0]])
    c = 1.5  # D(x) = c * x: d logit / d w1 = c z, d logit / d w2 = c

    class Scale(nn.Module):
        def forward(self, x):
            return c * x.squeeze(1)

    fisher = estimate_fisher(_Line(), Scale(), z)
    assert fisher[0].item() == pytest.approx(c ** 2 * (1 + 4 + 9) / 3)
    assert fisher[1].item() == pytest.approx(c ** 2)


def test_each_repulsion_decreases_as_the_distance_grows():
    distances = torch.tensor([0.01, 0.1, 1.0, 10.0])
    for method in ("nl2", "el2", "il2"):
        values = repulsion(method, distances, gamma=2.0)
        assert torch.all(values[1:] < values[:-1]), method
    with pytest.raises(FederatedError, match="repulsion"):
        repulsion("l3", distances, 1.0)


def test_distance_is_the_official_mean_squared_difference_per_tensor_times_k_over_2():
    params = [torch.zeros(2), torch.zeros(3)]
    adapted = [[torch.ones(2), torch.full((3,), 2.0)], [torch.ones(2), torch.zeros(3)]]
    # per tensor: sum over models of mean sq diff = (1 + 1), (4 + 0); / 2 tensors; * K/2 = 1
    assert parameter_distance(params, adapted).item() == pytest.approx((2 + 4) / 2 * 2 / 2)
    assert torch.equal(extrapolate([torch.ones(2)], [[torch.zeros(2)], [torch.full((2,), 2.0)]], 1.0)[0],
                       torch.ones(2))


def test_pul_and_balance_by_hand():
    old = torch.tensor([1, 1, 1, 1, 2, 3])
    new = torch.tensor([1, 2, 3, 2, 2, 3])
    assert pul(old, new, 1) == pytest.approx(75.0)  # 4 -> 1
    with pytest.raises(FederatedError, match="no sample"):
        pul(torch.tensor([0, 2]), new, 1)
    balanced = torch.tensor([d for d in range(10) if d != 4] * 5)
    assert retained_balance(balanced, 4) == pytest.approx(1.0)
    assert retained_balance(torch.tensor([0] * 40 + [4] * 5), 4) == pytest.approx(0.0)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_matches_the_formula():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=generator)
    b = torch.randn(4000, 3, generator=generator) @ torch.tensor([[2.0, 0.3, 0], [0, 1, 0], [0, 0, 0.5]]) + 1.0
    assert abs(frechet_distance(a, a)) < 1e-6
    mu_a, mu_b = a.double().mean(0).numpy(), b.double().mean(0).numpy()
    cov_a, cov_b = np.cov(a.double().numpy(), rowvar=False), np.cov(b.double().numpy(), rowvar=False)
    by_hand = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance(a, b) == pytest.approx(by_hand, rel=1e-6)


# ---- the method on a toy world where the answer is known --------------------------------------------
class _Brightness(nn.Module):
    """Class 1 when an image's mean intensity is above 0.5, else class 0; features (mean, std)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # so next(parameters()) finds a device

    def embed(self, x):
        flat = x.flatten(1)
        return torch.stack([flat.mean(1), flat.std(1)], 1)

    def forward(self, x):
        logits = torch.zeros(len(x), 10)
        logits[:, 1] = (x.flatten(1).mean(1) - 0.5) * 10
        return logits


class _ToyGenerator(nn.Module):
    """Uniform grey images of brightness sigmoid(2 z_0 + shift): half are 'ones' at shift = 0, and
    unlearning the ones means moving the one parameter, shift, down."""

    z_dim = 4

    def __init__(self):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(1))

    def forward(self, z):
        return torch.sigmoid(2 * z[:, :1] + self.shift).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)


class _ToyDiscriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(1, 1)

    def forward(self, x):
        return self.net(x.flatten(1).mean(1, keepdim=True)).squeeze(1)


def _toy_inputs(config, device):
    classifier = _Brightness()
    generator, discriminator = _ToyGenerator().eval(), _ToyDiscriminator().eval()
    latents = torch.randn(2000, 4, generator=torch.Generator().manual_seed(1))
    reference = UnlearningReference(classifier, config.forget, latents, classifier(generator(latents)).argmax(1),
                                    classifier.embed(torch.rand(500, 1, 4, 4) * 0.4))
    states = tuple(torch.optim.Adam(m.parameters()).state_dict() for m in (generator, discriminator))
    return UnlearningInputs(generator.requires_grad_(False), discriminator.requires_grad_(False), states, reference,
                            None)


def _toy_config(method="el2", **extra):
    values = {"gan": "toy", "classifier": "toy", "forget": "1", "method": method, "lr": "0.1", "gamma": "1",
              "ewc_weight": "1", "adapted_models": "2", "adapt_steps": "20", "unlearn_steps": "40",
              "negative_draws": "200",
              "positives": "200", "eval_samples": "2000", "fisher_samples": "8", "eval_every": "10",
              "checkpoint_every": "10", "log_every": "10", **{k: str(v) for k, v in extra.items()}}
    return build_config(SPEC.config_cls, SPEC.presets, "paper", values)


@pytest.fixture
def toy_world(monkeypatch):
    monkeypatch.setattr(gan_unlearning, "load_inputs", _toy_inputs)


@pytest.mark.parametrize("method", ["el2", "nl2", "finetune"])
def test_unlearning_a_toy_gan_lowers_the_forgotten_class_share(tmp_path, toy_world, method):
    summary = train(SPEC, _toy_config(method), str(tmp_path / method), "paper", quiet=True)
    if method != "finetune":  # G_0 still at the first evaluation (stage 1 runs first)
        first = json.loads(next(line for line in (tmp_path / method / "metrics.jsonl").open() if '"eval"' in line))
        assert first["forget_share"] == pytest.approx(0.5, abs=0.05)
    # measured: el2 0.24, nl2 0.002, finetune 0.07 after 40 steps (GAN dynamics: not monotone for finetune)
    assert summary["final"]["forget_share"] < 0.35
    assert summary["final"]["pul"] > 30


def test_unlearning_resumes_after_a_crash_exactly(tmp_path, toy_world, monkeypatch):
    config = _toy_config("el2")
    train(SPEC, config, str(tmp_path / "full"), "paper", quiet=True)
    original, calls = GanUnlearning.update, {"n": 0}

    def crash_at_step_25(self):  # mid stage 1 of the second adapted model... and beyond the first checkpoint
        calls["n"] += 1
        if calls["n"] == 25:
            raise RuntimeError("simulated kill")
        return original(self)

    monkeypatch.setattr(GanUnlearning, "update", crash_at_step_25)
    with pytest.raises(RuntimeError):
        train(SPEC, config, str(tmp_path / "crashed"), "paper", quiet=True)
    monkeypatch.setattr(GanUnlearning, "update", original)
    resumed = train(SPEC, config, str(tmp_path / "crashed"), "paper", if_exists="resume", quiet=True)
    assert resumed["resumed_from"] == [20]

    def rows(path):
        return [{k: v for k, v in json.loads(line).items() if k not in ("time", "steps_per_s")}
                for line in (path / "metrics.jsonl").open()]

    assert rows(tmp_path / "crashed") == rows(tmp_path / "full")


def test_bad_inputs_are_one_clear_error(tmp_path):
    with pytest.raises(FederatedError, match="forget=12"):
        _toy_config(forget=12)
    with pytest.raises(FederatedError, match="method="):
        _toy_config(method="erase")
    config = build_config(SPEC.config_cls, SPEC.presets, "tiny", {})
    with pytest.raises(FederatedError, match="--set gan=<run dir>"):
        gan_unlearning.load_inputs(config, "cpu")


def test_a_gan_checkpoint_of_another_shape_is_one_clear_error(tmp_path):
    from grp_workbench.federated.generative.dcgan import GAN_SPEC, load_gan

    run = tmp_path / "gan"
    train(GAN_SPEC, build_config(GAN_SPEC.config_cls, GAN_SPEC.presets, "tiny", {"total_steps": "2"}), str(run),
          "tiny", quiet=True)
    header = json.loads((run / "config.json").read_text())
    header["config"]["width"] = 16  # the checkpoint holds width-32 tensors
    (run / "config.json").write_text(json.dumps(header))
    with pytest.raises(FederatedError, match="does not fit the DCGAN"):
        load_gan(run)


def test_the_cli_names_bad_unlearning_settings_in_one_line(tmp_path):
    import subprocess
    import sys

    for overrides, expected in ((["forget=12"], "forget=12"), (["method=erase"], "method='erase'"),
                                ([], "--set gan=<run dir>")):
        args = ["federated", "unlearn", "gan", "--preset", "tiny", "--run-dir", str(tmp_path / "run")]
        for override in overrides:
            args += ["--set", override]
        result = subprocess.run([sys.executable, "-m", "grp_workbench.harness.cli", *args], capture_output=True,
                                text=True)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_gan_copy_without_its_optimizer_states_is_one_clear_error(tmp_path, monkeypatch):
    """Unlearning starts from the pre-training optimizer states (the official protocol); a weights-only
    copy of the GAN is refused by name instead of silently starting from fresh Adam moments."""
    monkeypatch.setattr(gan_unlearning, "unlearning_reference", lambda *args: None)
    monkeypatch.setattr(gan_unlearning, "_gan_state", lambda run_dir: {"generator": {}, "discriminator": {}})
    monkeypatch.setattr("grp_workbench.federated.generative.dcgan.load_gan", lambda *args: (None, None, {}))
    with pytest.raises(FederatedError, match="no opt_g, opt_d.*optimizer states"):
        gan_unlearning.load_inputs(_toy_config(), "cpu")
