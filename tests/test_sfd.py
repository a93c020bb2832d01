"""The diffusion teacher and Score Forgetting Distillation (federated/generative/diffusion.py,
federated/unlearning/sfd.py)."""

from __future__ import annotations

import json

import pytest
import torch

from grp_workbench.federated import FederatedError
from grp_workbench.federated.generative import diffusion
from grp_workbench.federated.unlearning import diffusion_baselines as baselines
from grp_workbench.federated.unlearning import sfd
from grp_workbench.harness.config import build_config
from grp_workbench.harness.trainer import train


def test_the_schedule_matches_the_reference_noise_levels():
    abar = diffusion.alphas_cumprod()
    # ../shared/references/unlearning.md: t 38 -> abar 0.9815; t_init 440 -> abar 0.1377, sigma 2.50;
    # t 711 -> sigma 13.0
    assert abar[38].item() == pytest.approx(0.9815, abs=1e-4)
    assert abar[440].item() == pytest.approx(0.1377, abs=1e-4)
    assert ((1 / abar[440] - 1) ** 0.5).item() == pytest.approx(2.50, abs=0.01)
    assert ((1 / abar[711] - 1) ** 0.5).item() == pytest.approx(13.0, abs=0.05)


def test_the_one_step_generator_maps_noise_to_an_image_in_one_evaluation():
    unet = diffusion.make_unet("8,8")
    calls = []
    unet.register_forward_hook(lambda module, args, out: calls.append(1))
    x = sfd.one_step_generate(unet, torch.randn(3, 1, 28, 28), torch.tensor([0, 4, 9]), 440)
    assert x.shape == (3, 1, 28, 28) and torch.isfinite(x).all() and len(calls) == 1


def test_a_perfect_denoiser_makes_the_generator_return_its_input_image():
    """With eps_theta the true noise of x_T' = sqrt(1 - abar) z around x0 = 0, x_g is exactly 0."""

    class TrueNoise(torch.nn.Module):
        def forward(self, x, t, class_labels=None):
            abar = diffusion.alphas_cumprod()[t].view(-1, 1, 1, 1)
            return type("Out", (), {"sample": x / (1 - abar).sqrt()})()

    x = sfd.one_step_generate(TrueNoise(), torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), 440)
    assert torch.allclose(x, torch.zeros_like(x), atol=1e-5)


def test_the_sid_loss_by_hand():
    p = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    q = torch.tensor([0.5, 0.0]).view(1, 1, 1, 2)
    x_g = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    alpha = 1.2
    omega = (1.0 + 1.0) / 2  # mean |p - x_g|
    # sum over pixels of (p - q) * ((p - x_g) - alpha (p - q)): 0.5 * (1 - 0.6) + 2 * (1 - 2.4) = -2.6
    by_hand = (0.5 * (1.0 - alpha * 0.5) + 2.0 * (1.0 - alpha * 2.0)) / omega
    assert by_hand == pytest.approx(-2.6)
    assert sfd.sid_generator_loss(p, q, x_g, alpha).item() == pytest.approx(by_hand, abs=1e-6)


def test_the_override_and_remaining_labels_never_name_the_forgotten_digit():
    g = torch.Generator().manual_seed(0)
    assert torch.all(sfd.override_labels(3, 7, 50, g, torch.device("cpu")) == 7)
    rand = sfd.override_labels(3, None, 2000, g, torch.device("cpu"))
    assert 3 not in rand.tolist() and set(rand.tolist()) == set(range(10)) - {3}
    remaining = sfd.remaining_labels(0, 2000, g, torch.device("cpu"))
    assert 0 not in remaining.tolist() and set(remaining.tolist()) == set(range(1, 10))


class _FixedClassifier(torch.nn.Module):
    """A classifier whose label is ``rule(images)`` (features: two pixels)."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule
        self.unused = torch.nn.Parameter(torch.zeros(()))  # so next(parameters()) finds a device

    def embed(self, x):
        return x.flatten(1)[:, :2]

    def forward(self, x):
        return torch.nn.functional.one_hot(self.rule(x), 10).float()


def test_rates_by_hand_on_a_fixed_classifier():
    by_mean = _FixedClassifier(lambda x: (x.flatten(1).mean(1) * 9).round().long())  # round(9 * mean intensity)
    images = torch.stack([torch.full((1, 28, 28), d / 9) for d in (0, 0, 1, 0, 2, 2, 5)])
    labels = torch.tensor([0, 0, 0, 0, 2, 3, 5])  # four conditioned on 0: three drawn as 0, one as 1
    metrics = sfd.conditional_unlearning_metrics(by_mean, images, labels, forget=0, override=1)
    assert metrics["forget_rate"] == pytest.approx(0.75)
    assert metrics["override_rate"] == pytest.approx(0.25)
    assert metrics["retained_acc"] == pytest.approx(2 / 3)  # 2 right, 3 wrong-as-2, 5 right


def test_bad_settings_are_one_clear_error():
    with pytest.raises(FederatedError, match="forget=10"):
        build_config(sfd.SFDConfig, sfd.PRESETS, "tiny", {"forget": "10"})
    with pytest.raises(FederatedError, match="equals forget=0"):
        build_config(sfd.SFDConfig, sfd.PRESETS, "tiny", {"forget": "0", "override": "0"})
    with pytest.raises(FederatedError, match="'seven'"):
        build_config(sfd.SFDConfig, sfd.PRESETS, "tiny", {"override": "seven"})
    with pytest.raises(FederatedError, match="--set teacher=<run dir>"):
        sfd.load_inputs(build_config(sfd.SFDConfig, sfd.PRESETS, "tiny", {}), "cpu")


@pytest.fixture
def tiny_teacher(monkeypatch):
    torch.manual_seed(0)
    teacher = diffusion.make_unet("8,8").eval()
    always_zero = _FixedClassifier(lambda x: torch.zeros(len(x), dtype=torch.long))
    monkeypatch.setattr(sfd, "load_inputs", lambda config, device: (teacher, always_zero))


def test_sfd_trains_and_resumes_after_a_crash_exactly(tmp_path, tiny_teacher, monkeypatch):
    config = build_config(sfd.SFDConfig, sfd.PRESETS, "tiny", {"teacher": "t", "classifier": "c",
                                                                 "total_steps": "6"})
    full = train(sfd.SPEC, config, str(tmp_path / "full"), "tiny", quiet=True)
    assert full["final"]["forget_rate"] == 1.0  # the constant classifier calls every sample a 0
    original, calls = sfd.ScoreForgettingDistillation.update, {"n": 0}

    def crash_at_step_4(self):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated kill")
        return original(self)

    monkeypatch.setattr(sfd.ScoreForgettingDistillation, "update", crash_at_step_4)
    with pytest.raises(RuntimeError):
        train(sfd.SPEC, config, str(tmp_path / "crashed"), "tiny", quiet=True)
    monkeypatch.setattr(sfd.ScoreForgettingDistillation, "update", original)
    resumed = train(sfd.SPEC, config, str(tmp_path / "crashed"), "tiny", if_exists="resume", quiet=True)
    assert resumed["resumed_from"] == [2]

    def rows(path):
        return [{k: v for k, v in json.loads(line).items() if k not in ("time", "steps_per_s")}
                for line in (path / "metrics.jsonl").open()]

    assert rows(tmp_path / "crashed") == rows(tmp_path / "full")


def test_the_teacher_trains_and_loads_from_its_run(tmp_path):
    config = build_config(diffusion.DiffusionConfig, diffusion.PRESETS, "tiny", {})
    summary = train(diffusion.SPEC, config, str(tmp_path / "teacher"), "tiny", quiet=True)
    assert summary["status"] == "finished" and summary["final"]["heldout_loss"] > 0
    model, saved = diffusion.load_diffusion(tmp_path / "teacher")
    assert saved["channels"] == "8,8" and not any(p.requires_grad for p in model.parameters())
    images = diffusion.sample(model, torch.tensor([0, 7]), steps=2)
    assert images.shape == (2, 1, 28, 28) and 0 <= images.min() and images.max() <= 1


# ---- the peers: Selective Amnesia and SalUn (federated/unlearning/diffusion_baselines.py) -------------
def test_the_fisher_by_hand_on_a_one_parameter_denoiser():
    """eps_theta(x_t) = w * x_t: the loss summed over the chosen t has gradient sum_t -2 x_t (eps - w x_t)."""

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.3))

        def forward(self, x, t, class_labels=None):
            return type("Out", (), {"sample": self.w * x})()

    model, images, labels = Scaled(), torch.randn(2, 1, 28, 28), torch.tensor([0, 1])
    fisher = baselines.diagonal_fisher(model, images, labels, timesteps=4, generator=torch.Generator().manual_seed(0))
    g, by_hand = torch.Generator().manual_seed(0), 0.0
    t = torch.linspace(0, 999, 4).round().long()
    for x in images:
        noise = torch.randn((4, *x.shape), generator=g)
        x_t = diffusion.diffuse(x.expand(4, *x.shape), t, noise)
        grad = (1000 / 4) * (-2 * x_t * (noise - 0.3 * x_t)).sum()
        by_hand += grad.item() ** 2 / 2
    assert fisher["w"].item() == pytest.approx(by_hand, rel=1e-4)


def test_the_saliency_mask_keeps_the_largest_gradients_over_all_parameters():
    torch.manual_seed(0)
    model = diffusion.make_unet("8,8")
    mask = baselines.saliency_mask(model, torch.rand(6, 1, 28, 28) * 2 - 1, 3, 0.5, 4, 1e9,
                                   torch.Generator().manual_seed(0))
    kept = sum(m.sum().item() for m in mask.values())
    total = sum(p.numel() for p in model.parameters())
    assert kept == int(total * 0.5)
    assert set(torch.cat([m.flatten() for m in mask.values()]).unique().tolist()) <= {0.0, 1.0}


@pytest.fixture
def tiny_baseline_teacher(monkeypatch):
    torch.manual_seed(0)
    teacher = diffusion.make_unet("8,8").eval().requires_grad_(False)
    always_zero = _FixedClassifier(lambda x: torch.zeros(len(x), dtype=torch.long))
    monkeypatch.setattr(baselines, "load_inputs", lambda config, device: (teacher, always_zero))
    return teacher


@pytest.mark.parametrize("method", baselines.METHODS)
def test_each_peer_moves_only_what_it_should_and_resumes_exactly(tmp_path, tiny_baseline_teacher, monkeypatch,
                                                                  method):
    config = build_config(baselines.DiffusionUnlearningConfig, baselines.PRESETS, "tiny",
                          {"teacher": "t", "classifier": "c", "method": method, "total_steps": "6"})
    full = train(baselines.SPEC, config, str(tmp_path / "full"), "tiny", quiet=True)
    assert full["final"]["forget_rate"] == 1.0  # the constant classifier calls every sample a 0
    state = torch.load(next((tmp_path / "full" / "checkpoints").glob("*.pt")), weights_only=False)["algorithm"]
    teacher = dict(tiny_baseline_teacher.named_parameters())
    moved = {name: not torch.equal(w, teacher[name]) for name, w in state["model"].items() if name in teacher}
    assert any(moved.values())
    if method == "salun":  # parameters outside the saliency mask never move
        mask = state["prepared"]["mask"]
        assert all(not moved[name] for name, m in mask.items() if m.sum() == 0)
        frozen = [(state["model"][name] - teacher[name])[mask[name] == 0] for name in mask]
        assert all(torch.all(d == 0) for d in frozen)
    original, calls = baselines.DiffusionUnlearning.update, {"n": 0}

    def crash_at_step_4(self):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated kill")
        return original(self)

    monkeypatch.setattr(baselines.DiffusionUnlearning, "update", crash_at_step_4)
    with pytest.raises(RuntimeError):
        train(baselines.SPEC, config, str(tmp_path / "crashed"), "tiny", quiet=True)
    monkeypatch.setattr(baselines.DiffusionUnlearning, "update", original)
    resumed = train(baselines.SPEC, config, str(tmp_path / "crashed"), "tiny", if_exists="resume", quiet=True)
    assert resumed["resumed_from"] == [2]

    def rows(path):
        return [{k: v for k, v in json.loads(line).items() if k not in ("time", "steps_per_s")}
                for line in (path / "metrics.jsonl").open()]

    assert rows(tmp_path / "crashed") == rows(tmp_path / "full")


def test_bad_peer_settings_are_one_clear_error():
    with pytest.raises(FederatedError, match="method='esd'"):
        build_config(baselines.DiffusionUnlearningConfig, baselines.PRESETS, "tiny", {"method": "esd"})
    with pytest.raises(FederatedError, match="forget=-1"):
        build_config(baselines.DiffusionUnlearningConfig, baselines.PRESETS, "tiny", {"forget": "-1"})
