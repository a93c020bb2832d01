import h5py
import numpy as np
import pytest
import torch

from grp_workbench.envs.datasets import build
from grp_workbench.harness.config import build_config, config_from_dict, config_to_dict
from grp_workbench.harness.device import make_policy
from grp_workbench.harness.trainer import train
from grp_workbench.rl import RLError
from grp_workbench.rl.offline.a2pr import SPEC as A2PR_SPEC
from grp_workbench.rl.offline.a2pr import A2PRConfig, advantage_guided_target
from grp_workbench.rl.offline.bc import SPEC as BC_SPEC
from grp_workbench.rl.offline.datasets import (
    D4RL_REFERENCE_RETURNS,
    d4rl_normalized_score,
    describe_hdf5,
    load_dataset,
    qlearning_arrays,
    read_d4rl_hdf5,
    write_d4rl_hdf5,
)
from grp_workbench.rl.offline.td3bc import SPEC as TD3BC_SPEC

SMALL = {"hidden": 64, "vae_hidden": 64, "batch_size": 128, "eval_episodes": 5}


def _arrays(n=6, obs_dim=2, act_dim=2):
    rng = np.random.default_rng(0)
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": np.arange(n, dtype=np.float32),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": np.zeros(n, dtype=bool),
    }


# ---- datasets ------------------------------------------------------------------------------------
def test_builder_and_reader_round_trip(tmp_path):
    path = build("pointreach-medium", n_steps=300, path=tmp_path / "pr.hdf5")
    with h5py.File(path) as f:
        assert {"observations", "actions", "rewards", "next_observations", "terminals", "timeouts"} <= set(f)
        stored_rewards = f["rewards"][()]
        assert f["timeouts"][()].sum() == 6 and f["terminals"][()].sum() == 0  # 50-step episodes
    data = read_d4rl_hdf5(path)
    assert len(data) == 300 and data.env_id == "workbench/PointReach-v0" and data.score_source == "local"
    assert np.allclose(data.rewards, stored_rewards) and data.dones.sum() == 0  # a timeout is not a terminal
    assert data.ref_min_return < data.ref_max_return
    again = read_d4rl_hdf5(build("pointreach-medium", n_steps=300, path=tmp_path / "pr2.hdf5"))
    assert np.array_equal(again.actions, data.actions)  # deterministic from the seed


def test_dataset_description_counts_episodes_ended_by_terminals_or_timeouts(tmp_path):
    arrays = _arrays(n=8)  # rewards 0..7
    arrays["timeouts"][2] = True
    arrays["terminals"][4] = True  # episodes 0-2 (return 3) and 3-4 (7); rows 5-7 are unfinished
    path = write_d4rl_hdf5(tmp_path / "d.hdf5", arrays, {"name": "toy", "env_id": "workbench/PointReach-v0",
                                                       "ref_min_return": 0.0, "ref_max_return": 10.0})
    info = describe_hdf5(path)
    assert (info["transitions"], info["episodes"]) == (8, 2)
    assert (info["return_min"], info["return_max"], info["return_mean"]) == (3, 7, 5)
    assert info["normalized_return_mean"] == pytest.approx(50.0)


def test_timeouts_are_not_terminals_and_are_skipped_without_next_observations():
    arrays = _arrays()
    arrays["timeouts"][2] = True  # the episode is cut after step 2; step 3 starts a new one
    arrays["terminals"][4] = True
    out = qlearning_arrays(arrays)
    # step 2 (timeout) and the last step (no successor) are dropped, as D4RL's qlearning_dataset does
    assert out["rewards"].tolist() == [0, 1, 3, 4]
    assert out["dones"].tolist() == [0, 0, 0, 1]
    assert np.array_equal(out["next_observations"][1], arrays["observations"][2])
    arrays["next_observations"] = arrays["observations"] + 1
    kept = qlearning_arrays(arrays)  # stored s' make the timeout step usable, still not a terminal
    assert kept["rewards"].tolist() == [0, 1, 2, 3, 4, 5] and kept["dones"].tolist() == [0, 0, 0, 0, 1, 0]


def test_normalized_score_uses_the_d4rl_constants():
    assert D4RL_REFERENCE_RETURNS["hopper"] == (-20.272305, 3234.3)
    assert d4rl_normalized_score("hopper-medium-replay-v2", 3234.3) == pytest.approx(100.0)
    assert d4rl_normalized_score("halfcheetah-medium-v2", -280.178953) == pytest.approx(0.0)
    expected = 100 * (2000 - 1.629008) / (4592.3 - 1.629008)
    assert d4rl_normalized_score("walker2d-medium-expert-v2", 2000) == pytest.approx(expected)
    with pytest.raises(RLError, match="no D4RL reference"):
        d4rl_normalized_score("pendulum", 0.0)


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: a.update(rewards=a["rewards"][:-1]), r"key 'rewards' has 5 rows but 'observations' has 6"),
    (lambda a: a["observations"].__setitem__((3, 0), np.nan), r"key 'observations' holds NaN/inf \(first at row 3\)"),
    (lambda a: a.pop("timeouts"), r"missing key\(s\) timeouts"),
    (lambda a: a.update(observations=np.zeros((6, 5), np.float32)), r"'observations' has width 5 but the environment"),
])
def test_bad_dataset_files_name_the_file_and_key(tmp_path, change, message):
    import h5py as h5

    arrays = _arrays()
    change(arrays)
    path = tmp_path / "bad.hdf5"
    with h5.File(path, "w") as f:  # written directly: our writer refuses bad data
        for key, value in arrays.items():
            f[key] = value
        f.attrs["env_id"] = "workbench/PointReach-v0"
        f.attrs["ref_min_return"], f.attrs["ref_max_return"] = -40.0, -2.0
    with pytest.raises(RLError, match=message) as error:
        read_d4rl_hdf5(path)
    assert "bad.hdf5" in str(error.value)


def test_missing_dataset_names_the_build_command(tmp_path):
    with pytest.raises(RLError, match="workbench rl data build hopper-medium-replay"):
        load_dataset("hopper-medium-replay")
    with pytest.raises(RLError, match="does not exist"):
        load_dataset(str(tmp_path / "nothing.hdf5"))


def test_writer_refuses_inconsistent_arrays(tmp_path):
    arrays = _arrays()
    arrays["actions"] = arrays["actions"][:3]
    with pytest.raises(RLError, match="'actions' has 3 rows"):
        write_d4rl_hdf5(tmp_path / "x.hdf5", arrays, {})
    assert not list(tmp_path.iterdir())  # nothing half-written


# ---- A2PR's advantage-selected target ------------------------------------------------------------
def test_a2pr_target_takes_the_action_with_the_higher_advantage():
    actions = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    recon = torch.tensor([[[-1.0], [-2.0], [-3.0], [-4.0]]])
    value = torch.tensor([[[0.0], [0.0], [0.0], [0.0]]])
    q_data = torch.tensor([[[1.0], [0.5], [-1.0], [-2.0]]])
    q_recon = torch.tensor([[[0.5], [0.5], [-0.5], [-3.0]]])
    target, weight = advantage_guided_target(actions, recon, q_data, q_recon, value, mask=0.4)
    # sample 0: data better; 1: tie -> reconstruction (>=); 2: reconstruction better; 3: data better
    assert target.flatten().tolist() == [1.0, -2.0, -3.0, 4.0]
    # weight: mask where Q(s, recon) >= V or Q(s, a) > V; sample 2 and 3 have neither
    assert weight.flatten().tolist() == pytest.approx([0.4, 0.4, 0.0, 0.0])


def test_a2pr_takes_official_per_task_hyperparameters_unless_set():
    hopper = A2PRConfig(dataset="hopper-medium-replay")
    assert (hopper.alpha, hopper.mask, hopper.vae_weight, hopper.discount) == (2.5, 0.4, 1.0, 0.995)
    cheetah = A2PRConfig(dataset="halfcheetah-medium", mask=0.7)
    assert (cheetah.alpha, cheetah.mask) == (40.0, 0.7)
    assert A2PRConfig(dataset="pointreach-medium").mask == 0.5  # the official code's default


@pytest.mark.parametrize("preset", sorted(A2PR_SPEC.presets))
def test_a2pr_built_from_a_preset_takes_its_own_datasets_hyperparameters(preset):
    # the benchmark and the CLI build configs as a copy of the default (hopper) config with --set
    # dataset=...: that copy once kept hopper's values on halfcheetah and walker2d
    cheetah = build_config(A2PRConfig, A2PR_SPEC.presets, preset, {"dataset": "halfcheetah-medium-replay"})
    assert (cheetah.alpha, cheetah.mask, cheetah.vae_weight, cheetah.discount) == (40.0, 1.0, 1.0, 0.99)
    walker = build_config(A2PRConfig, A2PR_SPEC.presets, preset, ["dataset=walker2d-medium-replay", "mask=0.7"])
    assert (walker.alpha, walker.mask, walker.vae_weight, walker.discount) == (2.5, 0.7, 1.5, 0.99)


def test_a2pr_resumed_from_its_saved_config_keeps_the_saved_hyperparameters():
    saved = config_to_dict(A2PRConfig(dataset="walker2d-medium-replay", mask=0.4, discount=0.995))
    restored = config_from_dict(A2PRConfig, saved)
    assert (restored.mask, restored.discount, restored.vae_weight) == (0.4, 0.995, 1.5)


# ---- learning ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [TD3BC_SPEC, A2PR_SPEC, BC_SPEC], ids=["td3bc", "a2pr", "bc"])
def test_offline_methods_improve_their_return_on_a_tiny_problem(tmp_path, spec):
    build("pointreach-medium", n_steps=5000)
    overrides = {**SMALL, "dataset": "pointreach-medium", "total_steps": 300, "eval_every": 300,
                 "checkpoint_every": 300}
    if spec is not A2PR_SPEC:
        overrides.pop("vae_hidden")
    else:  # A2PR's official depths (3-4 hidden layers) are slow to fit here; the update is the same
        overrides |= {"actor_layers": 2, "critic_layers": 2, "value_layers": 2, "total_steps": 200,
                      "eval_every": 200}
    config = build_config(spec.config_cls, spec.presets, "tiny", overrides)
    untrained = spec.build(config, make_policy("cpu", "fp32")).evaluate()["normalized_score"]
    summary = train(spec, config, tmp_path / spec.name, "tiny", quiet=True)
    assert summary["final"]["normalized_score"] > max(untrained + 30, 70), (untrained, summary["final"])
    if spec is not BC_SPEC:  # every evaluation also measures how far the policy drifts from the data
        from grp_workbench.harness.runs import RunDir
        from grp_workbench.rl.benchmarks import merged_drift, plot_drift

        assert summary["final"]["drift/action_mse"] >= 0 and "drift/q_gain" in summary["final"]
        history = {"method": spec.name, "task": "pointreach", "seeds": [0],
                   "rows": RunDir(tmp_path / spec.name).read_metrics("eval")}
        assert plot_drift(merged_drift([history]), tmp_path / "drift.png")


def test_batched_seeds_report_each_member(tmp_path):
    build("pointreach-medium", n_steps=2000)
    config = build_config(TD3BC_SPEC.config_cls, TD3BC_SPEC.presets, "tiny", {
        **{k: v for k, v in SMALL.items() if k != "vae_hidden"}, "dataset": "pointreach-medium", "n_seeds": 3,
        "seed": 4, "total_steps": 20, "eval_every": 20, "eval_episodes": 2})
    summary = train(TD3BC_SPEC, config, tmp_path / "run", "tiny", quiet=True)
    scores = [summary["final"][f"normalized_score/seed{s}"] for s in (4, 5, 6)]
    assert summary["final"]["normalized_score"] == pytest.approx(np.mean(scores))
    assert len(set(scores)) == 3  # independent initializations

    from typer.testing import CliRunner

    from grp_workbench.harness.cli import app

    result = CliRunner().invoke(app, ["rl", "drift", str(tmp_path / "run"), "--states", "64"])
    assert result.exit_code == 0, result.output
    rows = [line.split("|")[1:-1] for line in result.output.splitlines() if "td3bc |" in line]
    assert [int(row[1]) for row in rows] == [4, 5, 6]
    assert [float(row[2]) for row in rows] == pytest.approx(scores, abs=0.05)  # the member's own score
    bad = CliRunner().invoke(app, ["rl", "drift", str(tmp_path)])
    assert isinstance(bad.exception, RLError) and "not a td3bc or a2pr run" in str(bad.exception)


def test_sac_behaviour_export_and_mujoco_style_levels(tmp_path):
    from grp_workbench.envs.behaviour import SPEC as BEHAVIOUR
    from grp_workbench.envs.behaviour import export_behaviour_policies
    from grp_workbench.envs.datasets import build_from_behaviour

    config = build_config(BEHAVIOUR.config_cls, BEHAVIOUR.presets, "tiny", {
        "env": "workbench/PointReach-v0", "total_steps": 500, "learning_starts": 300, "steps_per_update": 100,
        "eval_every": 250, "checkpoint_every": 250, "batch_size": 32})
    summary = train(BEHAVIOUR, config, tmp_path / "sac", "tiny", quiet=True)
    assert summary["status"] == "finished" and summary["step"] == 500
    policies = export_behaviour_policies(tmp_path / "sac", out=tmp_path / "pr.pt")
    stored = torch.load(policies, weights_only=False)
    assert [s["step"] for s in stored["replay"]] == [300, 500][: len(stored["replay"])]
    assert all(v.dtype == torch.float16 for v in stored["expert"]["actor"].values())
    replay = read_d4rl_hdf5(build_from_behaviour("pr", "medium-replay", 0, seed=0, path=tmp_path / "mr.hdf5",
                                                 policies_path=policies))
    assert len(replay) == stored["medium"]["step"]  # uniform until learning_starts, then each snapshot's steps
    both = read_d4rl_hdf5(build_from_behaviour("pr", "medium-expert", 400, seed=0, path=tmp_path / "me.hdf5",
                                               policies_path=policies))
    assert len(both) == 400 and both.score_source == "local" and both.metadata["expert_step"] == 500


def test_minari_export_reads_back_the_same_transitions(tmp_path, monkeypatch):
    from grp_workbench.envs.datasets import export_minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    path = build("pointreach-medium", n_steps=300, path=tmp_path / "pr.hdf5")
    export_minari(path, "workbench/pointreach/medium-v0")
    ours, theirs = read_d4rl_hdf5(path), load_dataset("minari:workbench/pointreach/medium-v0")
    assert len(theirs) == len(ours) == 300
    for key in ("observations", "actions", "rewards", "next_observations", "dones"):
        assert np.array_equal(getattr(theirs, key), getattr(ours, key)), key
    assert (theirs.ref_min_return, theirs.ref_max_return) == (ours.ref_min_return, ours.ref_max_return)
    assert theirs.env_id == ours.env_id


def test_mujoco_warnings_become_python_warnings_not_a_log_file(tmp_path, monkeypatch):
    from grp_workbench.envs import MujocoWarning, make_env

    monkeypatch.chdir(tmp_path)
    with pytest.warns(MujocoWarning, match="settotalmass"):  # Gymnasium's HalfCheetah-v5 XML uses it
        make_env("HalfCheetah-v5").close()
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_reading_mujoco_data_routes_mujoco_warnings_too(tmp_path, monkeypatch):
    import mujoco

    from grp_workbench import envs

    monkeypatch.setattr(envs, "_mujoco_warnings_routed", False)  # as in a fresh process
    mujoco.set_mju_user_warning(None)
    monkeypatch.chdir(tmp_path)
    path = write_d4rl_hdf5(tmp_path / "hc.hdf5", _arrays(obs_dim=17, act_dim=6),
                           {"name": "halfcheetah-medium", "env_id": "HalfCheetah-v5"})
    with pytest.warns(envs.MujocoWarning):
        assert len(read_d4rl_hdf5(path)) == 5  # the last row has no next observation
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_policy_drift_shrinks_as_the_policy_clones_the_data(tmp_path):
    path = build("pointreach-expert", n_steps=2000, path=tmp_path / "expert.hdf5")  # a deterministic expert
    config = build_config(TD3BC_SPEC.config_cls, TD3BC_SPEC.presets, "tiny", {
        **{k: v for k, v in SMALL.items() if k != "vae_hidden"}, "dataset": str(path), "n_seeds": 2,
        "alpha": 0.0, "policy_freq": 1})  # alpha 0: pure behaviour cloning
    torch.manual_seed(0)
    algorithm = TD3BC_SPEC.build(config, make_policy("cpu", "fp32"))
    before = algorithm.policy_drift(n_states=512)
    assert set(before) == {"action_mse", "q_data", "q_gain", "saturated_fraction"}
    assert all(value.shape == (2,) for value in before.values())
    for _ in range(300):
        algorithm.update()
    after = algorithm.policy_drift(n_states=512)
    assert (after["action_mse"] < 0.25 * before["action_mse"]).all(), (before, after)
    assert np.array_equal(algorithm.policy_drift(n_states=512)["action_mse"], after["action_mse"])  # same states


# ---- defects of the independent check (issue 24) ---------------------------------------------------
def test_d4rl_download_names_are_recognised(tmp_path):
    from grp_workbench.rl.offline.datasets import d4rl_task_name, task_family

    assert [task_family(n) for n in ("hopper_medium-v2", "walker2d_medium_replay-v2", "halfcheetah-medium-v2",
                                     "Hopper-v5", "mujoco/hopper/medium-v0", "pointreach-medium")] == \
        ["hopper", "walker2d", "halfcheetah", "hopper", "hopper", "pointreach"]
    assert d4rl_task_name("hopper_medium_replay-v2") == "hopper-medium-replay"
    # a D4RL file under its download name, without this project's attributes: Hopper, D4RL's references
    rng = np.random.default_rng(0)
    arrays = {"observations": rng.normal(size=(8, 11)).astype(np.float32),
              "actions": rng.uniform(-1, 1, size=(8, 3)).astype(np.float32),
              "rewards": np.ones(8, np.float32), "terminals": np.zeros(8, bool), "timeouts": np.zeros(8, bool)}
    path = tmp_path / "hopper_medium-v2.hdf5"
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
    data = read_d4rl_hdf5(path)
    assert (data.env_id, data.score_source) == ("Hopper-v5", "d4rl")
    assert (data.ref_min_return, data.ref_max_return) == D4RL_REFERENCE_RETURNS["hopper"]
    hopper = A2PRConfig(dataset=str(path))  # the official hopper values, not the code's defaults
    assert (hopper.mask, hopper.discount) == (0.4, 0.995)


def test_a2pr_on_an_unknown_family_is_an_explicit_choice():
    with pytest.raises(RLError, match="per task family .*'antmaze-umaze.hdf5' is none of them.*hyperparameters=hopper"):
        A2PRConfig(dataset="antmaze-umaze.hdf5")
    assert A2PRConfig(dataset="antmaze-umaze.hdf5", hyperparameters="walker2d").vae_weight == 1.5
    assert A2PRConfig(dataset="antmaze-umaze.hdf5", hyperparameters="code-defaults").mask == 0.5
    chosen = A2PRConfig(dataset="antmaze-umaze.hdf5", alpha=1.0, mask=0.3, vae_weight=1.0, discount=0.99)
    assert chosen.mask == 0.3
    with pytest.raises(RLError, match="hyperparameters='ant' is not one of"):
        A2PRConfig(dataset="x.hdf5", hyperparameters="ant")


def test_a_built_dataset_marks_every_cut_as_a_timeout(tmp_path):
    from grp_workbench.envs.datasets import rollout
    from grp_workbench.envs.point_reach import expert_action

    def policy(observation, rng):
        return expert_action(observation)

    arrays = rollout("workbench/PointReach-v0", policy, 37, seed=0)  # cut inside an episode
    ends = arrays["terminals"].astype(bool) | arrays["timeouts"].astype(bool)
    assert ends[-1] and arrays["timeouts"][-1]
    # nowhere may the next row's state differ from s' without an episode end (what D4RL's loaders read)
    seams = np.flatnonzero((arrays["observations"][1:] != arrays["next_observations"][:-1]).any(1))
    assert ends[seams].all()


def test_offline_methods_refuse_a_precision_they_do_not_use(tmp_path):
    from grp_workbench.harness.errors import HarnessError
    from grp_workbench.harness.trainer import device_policy_for

    build("pointreach-medium", n_steps=2000)
    config = build_config(TD3BC_SPEC.config_cls, TD3BC_SPEC.presets, "tiny",
                          {"dataset": "pointreach-medium", "precision": "bf16"})
    with pytest.raises(HarnessError, match="td3bc trains in fp32 only.*--precision bf16"):
        train(TD3BC_SPEC, config, tmp_path / "run", "tiny", quiet=True)
    config.precision = "auto"  # auto means what the method implements
    assert device_policy_for(TD3BC_SPEC, config).precision == "fp32"


def test_each_batched_member_is_evaluated_on_its_own_start_states():
    build("pointreach-medium", n_steps=2000)
    config = build_config(TD3BC_SPEC.config_cls, TD3BC_SPEC.presets, "tiny", {
        "dataset": "pointreach-medium", "n_seeds": 3, "seed": 4, "eval_episodes": 2})
    seeds = TD3BC_SPEC.build(config, make_policy("cpu", "fp32")).evaluation_seeds()
    alone = build_config(TD3BC_SPEC.config_cls, TD3BC_SPEC.presets, "tiny", {
        "dataset": "pointreach-medium", "seed": 5, "eval_episodes": 2})
    assert seeds[2:4] == TD3BC_SPEC.build(alone, make_policy("cpu", "fp32")).evaluation_seeds()  # member seed 5
    assert seeds[0:2] != seeds[2:4] != seeds[4:6]  # not the first member's start states for all


def test_actor_step_metrics_average_over_the_updates_that_made_them(tmp_path):
    """A metric an update reports every second time (TD3's delayed actor step) is logged as the mean
    of the updates that reported it, not halved by the ones that did not."""
    from dataclasses import replace as changed

    from tests.conftest import TOY_PRESETS, TOY_SPEC, ToyConfig, ToyRegression, metric_rows

    class DelayedActor(ToyRegression):
        updates = 0

        def update(self):
            self.updates += 1
            return super().update() | ({"actor_metric": 1.0} if self.updates % 2 == 0 else {})

    spec = changed(TOY_SPEC, build=DelayedActor)
    config = build_config(ToyConfig, TOY_PRESETS, "paper", {"total_steps": "20", "log_every": "10"})
    train(spec, config, tmp_path / "run", "paper", quiet=True)
    rows = [row for row in metric_rows(tmp_path / "run") if "actor_metric" in row]
    assert [row["actor_metric"] for row in rows] == [1.0, 1.0]


@pytest.mark.parametrize("spec", [TD3BC_SPEC, A2PR_SPEC], ids=["td3bc", "a2pr"])
def test_batched_updates_match_the_plain_per_seed_reference(spec, monkeypatch):
    """From the same weights, minibatches and noise, in float64, every member of the batched update
    follows the plain reference (rl/offline/reference.py) to rounding, over four updates (two
    actor steps): what any faster path of these updates must keep."""
    from grp_workbench.rl.offline.reference import ReferenceA2PR, ReferenceTD3BC

    torch.manual_seed(0)
    build("pointreach-medium", n_steps=2000)
    overrides = {"dataset": "pointreach-medium", "n_seeds": 2, "hidden": 32, "batch_size": 16}
    if spec is A2PR_SPEC:
        overrides |= {"vae_hidden": 24}
    config = build_config(spec.config_cls, spec.presets, "tiny", overrides)
    algorithm = spec.build(config, make_policy("cpu", "fp32"))
    for module in algorithm.modules().values():
        if isinstance(module, torch.nn.Module):
            module.double()
    sampler = algorithm.sampler
    for name in ("observations", "next_observations", "actions", "rewards", "not_dones"):
        setattr(sampler, name, getattr(sampler, name).double())
    references = [(ReferenceA2PR if spec is A2PR_SPEC else ReferenceTD3BC)(algorithm, k) for k in range(2)]
    initial = algorithm.actor.net[0].weight[0].detach().clone()

    batches, noises = [], []
    sample, randn_like = sampler.sample, torch.randn_like
    monkeypatch.setattr(sampler, "sample", lambda *a: batches.append(sample(*a)) or batches[-1])
    monkeypatch.setattr(torch, "randn_like", lambda x: noises.append(randn_like(x)) or noises[-1])
    for _ in range(4):
        batches.clear()
        noises.clear()
        algorithm.update()
        for k, reference in enumerate(references):
            reference.update([t[k] for t in batches[0]], [n[k] for n in noises])

    batched = {"actor": algorithm.actor.net, "actor_target": algorithm.actor_target.net}
    for k, reference in enumerate(references):
        expected = reference.parameters()
        for name, net in batched.items():
            for ours, theirs in zip([t for layer in net if hasattr(layer, "weight") for t in (layer.weight[k],
                                                                                               layer.bias[k])],
                                    expected[name], strict=True):
                torch.testing.assert_close(ours, theirs.detach(), rtol=1e-7, atol=1e-9)
        critic = [layer for layer in algorithm.critic.net if hasattr(layer, "weight")]
        for head, name in ((k, "critic_q1"), (2 + k, "critic_q2")):
            ours = [t for layer in critic for t in (layer.weight[head], layer.bias[head])]
            for a, b in zip(ours, expected[name], strict=True):
                torch.testing.assert_close(a, b.detach(), rtol=1e-7, atol=1e-9)
        if spec is A2PR_SPEC:
            for name, net in (("value", algorithm.value), ("vae_encoder", algorithm.vae.encoder),
                              ("vae_decoder", algorithm.vae.decoder)):
                ours = [t for layer in net if hasattr(layer, "weight") for t in (layer.weight[k], layer.bias[k])]
                for a, b in zip(ours, expected[name], strict=True):
                    torch.testing.assert_close(a, b.detach(), rtol=1e-7, atol=1e-9)
    # the weights moved: the comparison is of training, not of untouched initial weights
    assert not torch.allclose(initial, algorithm.actor.net[0].weight[0])


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_speed_profile_names_host_time_on_a_gpu(tmp_path, device):
    """On a GPU the profiler's self CPU time is the host issuing kernels, not the GPU's work: the
    profile table says so there, and only there."""
    import json

    from grp_workbench.harness.bench import RECORD_FILE, BenchOptions, cell_path
    from grp_workbench.rl.benchmarks import OFFLINE_RL_SPEED, _speed_cells, _speed_extra

    options = BenchOptions(runs=str(tmp_path / "runs"), out=str(tmp_path / "out"), device=device)
    cell = _speed_cells(options)[0]
    folder = cell_path(OFFLINE_RL_SPEED, options, cell)
    folder.mkdir(parents=True)
    (folder / RECORD_FILE).write_text(json.dumps({"params": cell.config, "records": []}))
    (folder / "profile.json").write_text(json.dumps({"a2pr": {
        "seconds_per_update": 0.0144, "shares": {"matrix multiplies": 0.19, "other": 0.81},
        "matmul_gflop_per_update": 4.13, "matmul_gflop_per_s": 1529.4}}))
    (tmp_path / "out").mkdir()
    text = _speed_extra(options, [cell], [])
    assert "| a2pr | 14.4 | 19% | 81% | 4.13 | 1529.4 |" in text
    assert ("host's time issuing kernels" in text) == (device == "cuda")
