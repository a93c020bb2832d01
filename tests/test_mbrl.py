"""MBPO and the single-model variants: the dynamics model, the schedule, the regularizers, learning,
resume and bad settings."""

import json

import pytest
import torch

from grp_workbench.harness.config import build_config
from grp_workbench.harness.trainer import train
from grp_workbench.rl import RLError
from grp_workbench.rl.common.networks import TwinQ
from grp_workbench.rl.common.sac import SAC, SACConfig
from grp_workbench.rl.mbrl import mbpo
from grp_workbench.rl.mbrl.dynamics import DynamicsConfig, GaussianDynamics
from grp_workbench.rl.mbrl.lipschitz import (
    adversarial_states,
    critic_gradient_norms,
    spectral_mlp_factory,
    spectral_norms,
)


def linear_gaussian_system(n: int, groups: int, seed: int = 0, noise: float = 0.1):
    """s' = s + sA + aB + N(0, noise²), r = s·w: the inputs and targets of a dynamics fit."""
    g = torch.Generator().manual_seed(seed)
    a_matrix, b_matrix = 0.3 * torch.randn(3, 3, generator=g), 0.5 * torch.randn(2, 3, generator=g)
    w = torch.randn(3, generator=g)
    states, actions = torch.randn(groups, n, 3, generator=g), 2 * torch.rand(groups, n, 2, generator=g) - 1
    delta = states @ a_matrix + actions @ b_matrix + noise * torch.randn(groups, n, 3, generator=g)
    inputs, targets = torch.cat([states, actions], -1), torch.cat([(states @ w).unsqueeze(-1), delta], -1)
    return inputs, targets, (a_matrix, b_matrix, w)


def test_the_gaussian_model_recovers_a_linear_gaussian_systems_mean_and_noise():
    torch.manual_seed(0)
    inputs, targets, (a_matrix, b_matrix, _) = linear_gaussian_system(1500, groups=1)
    model = GaussianDynamics(3, 2, DynamicsConfig(members=1, elites=1, hidden=64, max_epochs=40))
    model.fit(inputs, targets, torch.Generator().manual_seed(0))
    states, actions = torch.randn(1, 400, 3), 2 * torch.rand(1, 400, 2) - 1
    mean, logvar = model(torch.cat([states, actions], -1).unsqueeze(1))
    true_delta = states @ a_matrix + actions @ b_matrix
    assert (mean[0, 0, :, 1:] - true_delta[0]).abs().mean() < 0.05  # the noise itself is 0.1
    predicted_std = logvar[0, 0, :, 1:].mul(0.5).exp().mean()
    assert 0.07 < predicted_std < 0.14


def test_ensemble_members_differ_and_the_elites_are_the_best_on_holdout():
    torch.manual_seed(0)
    inputs, targets, _ = linear_gaussian_system(600, groups=2)
    model = GaussianDynamics(3, 2, DynamicsConfig(members=4, elites=2, hidden=32, max_epochs=8), n_groups=2)
    model.fit(inputs, targets, torch.Generator().manual_seed(1))
    first = model.layers[0].weight
    assert not torch.allclose(first[0], first[1])  # members are distinct networks
    # the holdout split is the first 20% of fit's permutation: rebuild it with the same generator
    generator = torch.Generator().manual_seed(1)
    order = torch.argsort(torch.rand(2, 600, generator=generator), dim=1)[:, :120]
    held_in = torch.gather(inputs, 1, order.unsqueeze(-1).expand(-1, -1, 5))
    held_out = torch.gather(targets, 1, order.unsqueeze(-1).expand(-1, -1, 4))
    holdout = model.mse(held_in, held_out)
    for group in range(2):
        assert set(model.elite_index[group].tolist()) == set(torch.argsort(holdout[group])[:2].tolist())
    next_states, rewards = model.step(inputs[:, :5, :3], inputs[:, :5, 3:], torch.Generator().manual_seed(0))
    assert next_states.shape == (2, 5, 3) and rewards.shape == (2, 5, 1)


def test_the_rollout_length_schedule_by_hand():
    hopper = (20, 150, 1, 15)
    assert [mbpo.rollout_length(e, hopper) for e in (0, 20, 21, 85, 149, 150, 400)] == [1, 1, 1, 8, 14, 15, 15]
    # epoch 21: 1 + 14/130 -> 1; epoch 85: 1 + 14·65/130 = 8
    assert mbpo.rollout_length(3, (1, 15, 1, 1)) == 1


def test_spectral_normalized_layers_have_spectral_norm_at_most_one():
    torch.manual_seed(0)
    net = spectral_mlp_factory("hidden")(14, 1, 64, 2, 4)
    for _ in range(300):  # one power iteration per forward pass, as in training (fixed weights here)
        net(torch.randn(4, 8, 14))
    norms = spectral_norms(net)  # (layers, members), by SVD
    # the power-iteration estimate approaches sigma_max from below, so W / sigma_est ends slightly above 1
    assert torch.all(norms[:-1] <= 1.01) and torch.all(norms[:-1] > 0.99)
    assert torch.all(norms[-1] > 0)  # the output layer is free ("hidden")
    assert torch.all(spectral_norms(spectral_mlp_factory("all")(14, 1, 64, 2, 4).train()) > 0)


def test_the_adversarial_perturbation_stays_in_its_ball_and_does_not_lower_the_gap():
    torch.manual_seed(0)
    critic = TwinQ(5, 2, 32, 2, n_members=3)
    states, actions = torch.randn(3, 64, 5), torch.rand(3, 64, 2)
    radius = 0.05 * torch.rand(3, 1, 5) + 0.01

    def gap(delta):
        with torch.no_grad():
            return (critic(states + delta, actions) - critic(states, actions)).square().sum().item()

    start = adversarial_states(critic, states, actions, radius, 0, torch.Generator().manual_seed(3))
    found = adversarial_states(critic, states, actions, radius, 5, torch.Generator().manual_seed(3))
    assert torch.all(found.abs() <= radius + 1e-7)
    assert gap(found) >= gap(start) > 0
    assert not any(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())


def test_the_critic_gradient_norm_is_the_lipschitz_constant_of_a_linear_critic():
    torch.manual_seed(0)
    critic = TwinQ(4, 1, 8, 0, n_members=1)  # no hidden layer: Q = [s, a]·w + b
    norms = critic_gradient_norms(critic, torch.randn(1, 10, 4), torch.randn(1, 10, 1))
    weights = critic.net[0].weight[:, :4, 0].norm(dim=1)  # the twins' state weights
    assert torch.allclose(norms, weights[:, None, None].expand(2, 1, 10), atol=1e-6)


def test_sac_members_train_independently_and_the_temperature_moves_toward_its_target():
    torch.manual_seed(0)
    agent = SAC(3, 1, 1.0, 2, SACConfig(hidden=16, alpha_lr=1e-2, target_entropy=-5.0), torch.device("cpu"))
    batch = {"states": torch.randn(2, 32, 3), "actions": torch.rand(2, 32, 1) * 2 - 1, "rewards": torch.randn(2, 32, 1),
             "next_states": torch.randn(2, 32, 3), "not_dones": torch.ones(2, 32, 1)}
    for _ in range(20):
        metrics = agent.update(**batch)
    assert metrics["alpha"] < 1.0  # entropy far above -5: the temperature falls
    actions = agent.act(torch.randn(2, 4, 3))
    assert actions.shape == (2, 4, 1) and actions.abs().max() <= 1.0


def tiny_config(**overrides):
    return build_config(mbpo.MBPOConfig, mbpo.PRESETS, "tiny", {k: str(v) for k, v in overrides.items()})


@pytest.mark.parametrize("variant", list(mbpo.VARIANTS))
def test_every_variant_trains_and_logs_its_diagnostics(tmp_path, variant):
    summary = train(mbpo.SPEC, tiny_config(variant=variant, total_steps=200), str(tmp_path / variant), "tiny",
                    quiet=True)
    final = summary["final"]
    assert summary["status"] == "finished" and -50 * 2**0.5 <= final["return"] <= 0  # PointReach: -‖x‖ <= 0, 50 steps
    assert final["lipschitz_max"] >= final["lipschitz_mean"] > 0 and final["value_aware_error"] >= 0


def test_mbpo_learns_to_reach_the_point_within_seconds(tmp_path):
    # PointReach: a random policy scores about -39 per episode, heading for the origin about -2.4
    config = tiny_config(variant="single", total_steps=600, rollout_batch_size=1000, updates_per_step=5,
                         eval_every=200, eval_episodes=5, model_max_epochs=0, hidden=64, batch_size=64)
    summary = train(mbpo.SPEC, config, str(tmp_path / "learn"), "tiny", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "learn" / "metrics.jsonl").open()]
    returns = [r["return"] for r in rows if r["split"] == "eval"]
    assert returns[0] < -30 and summary["final"]["return"] > -15


@pytest.mark.parametrize("env", ["workbench/PointReach-v0", "InvertedPendulum-v5"])  # own snapshot; MuJoCo state
def test_mbpo_resumes_after_a_crash_exactly(tmp_path, monkeypatch, env):
    config = tiny_config(variant="single-sn-adv", env=env, total_steps=200, deterministic=True)
    train(mbpo.SPEC, config, str(tmp_path / "full"), "tiny", quiet=True)
    original, calls = mbpo.MBPO.update, {"n": 0}

    def crash_at_step_130(self):
        calls["n"] += 1
        if calls["n"] == 130:
            raise RuntimeError("simulated kill")
        return original(self)

    monkeypatch.setattr(mbpo.MBPO, "update", crash_at_step_130)
    with pytest.raises(RuntimeError):
        train(mbpo.SPEC, config, str(tmp_path / "crashed"), "tiny", quiet=True)
    monkeypatch.setattr(mbpo.MBPO, "update", original)
    resumed = train(mbpo.SPEC, config, str(tmp_path / "crashed"), "tiny", if_exists="resume", quiet=True)
    assert resumed["resumed_from"] == [100]
    timing = ("time", "steps_per_s", "model_train_s", "updates_per_s")

    def rows(path):
        lines = (path / "metrics.jsonl").open()
        return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]

    assert rows(tmp_path / "crashed") == rows(tmp_path / "full")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"variant": "ensemble"}, "variant='ensemble' is not one of mbpo-ensemble"),
    ({"env": "Ant-v5"}, "env='Ant-v5'"),
    ({"sn_layers": "first"}, "sn_layers='first'"),
])
def test_a_bad_variant_or_environment_is_one_clear_error(overrides, message):
    with pytest.raises(RLError, match=message):
        tiny_config(**overrides)
