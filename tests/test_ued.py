import numpy as np
import pytest

from grp_workbench.envs.levels import EMPTY, MOSS, WALL, Level, load_levels
from grp_workbench.rl.ued.samplers import DREDBuffer, DREDConfig, PLRConfig, PLRSampler, rank_weights, staleness_weights


def _level(tag: int) -> Level:
    """A distinct level per tag: the tag's bits as walls on a 5 x 5 grid (start and goal stay open)."""
    grid = np.zeros((5, 5), dtype=np.uint8) + EMPTY
    cells = [(r, c) for r in range(5) for c in range(5) if (r, c) not in ((0, 0), (4, 4))]
    for bit, cell in enumerate(cells):
        if tag >> bit & 1:
            grid[cell] = WALL
    return Level(grid, (0, 0), (4, 4), f"l{tag}")


def test_rank_weights_match_hand_computation():
    scores = np.array([0.5, 2.0, 1.0])  # ranks 3, 1, 2
    assert rank_weights(scores, 1.0) == pytest.approx([2 / 11, 6 / 11, 3 / 11])
    assert rank_weights(scores, 0.5) == pytest.approx([4 / 49, 36 / 49, 9 / 49])
    assert staleness_weights(np.array([1, 3, 4]), 5) == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_plr_mixes_rank_and_staleness():
    sampler = PLRSampler([_level(i) for i in range(3)], PLRConfig(temperature=1.0, staleness_coef=0.3), seed=0)
    for level_id, score in enumerate([0.5, 2.0, 1.0]):
        sampler.update(level_id, score, max_return=0.0)
    sampler.last_sampled[:] = [1, 3, 4]
    sampler.episode = 5
    expected = 0.7 * np.array([2 / 11, 6 / 11, 3 / 11]) + 0.3 * np.array([4 / 7, 2 / 7, 1 / 7])
    assert sampler.weights() == pytest.approx(expected)


def test_plr_plays_every_unseen_level_before_replaying_when_asked():
    sampler = PLRSampler([_level(i) for i in range(5)], PLRConfig(unseen_until=1.0), seed=0)
    first = []
    for _ in range(5):
        level_id = sampler.sample(1)[0]
        first.append(level_id)
        sampler.update(level_id, score=float(level_id), max_return=0.0)
    assert sorted(first) == [0, 1, 2, 3, 4]  # no replay until all have been seen
    later = [sampler.sample(1)[0] for _ in range(200)]
    assert np.bincount(later, minlength=5).argmax() == 4  # then the highest score dominates (T 0.1)


def test_dred_buffer_never_evicts_training_levels_and_ignores_unsolved_generated_levels():
    dataset = [_level(i) for i in range(4)]
    buffer = DREDBuffer(dataset, DREDConfig(buffer_size=6), seed=0)
    rng = np.random.default_rng(0)
    for step in range(50):
        buffer.add_generated(_level(100 + step), score=float(rng.uniform(0, 1)), max_return=float(rng.uniform(-1, 1)))
    assert len(buffer.entries) == 6 and buffer.n_generated() == 2
    assert [buffer.level(i).structure for i in range(4)] == ["l0", "l1", "l2", "l3"]
    assert all(buffer.entries[i].from_dataset for i in range(4))
    unsolved = buffer.add_generated(_level(999), score=5.0, max_return=0.0)  # never solved: grounded score 0
    assert unsolved is None
    # at the end of training (c_t = 1) a never-solved generated level gets no secondary weight
    buffer.entries[5].max_return = -1.0
    buffer.set_progress(1.0)
    for i in range(6):
        buffer.update(i, score=0.5, max_return=1.0 if i != 5 else -1.0)
    assert buffer.weights()[5] == 0.0 and buffer.weights()[:5].sum() == pytest.approx(1.0)
    # at the start (c_t = 0) only training levels are replayed
    buffer.set_progress(0.0)
    assert buffer.weights()[4:].sum() == 0.0


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: extra threads only add contention
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("recurrent", [False, True], ids=["feedforward", "lstm"])
def test_ppo_solves_a_trivial_level_within_seconds(tmp_path, one_thread, recurrent):
    import torch

    from grp_workbench.envs.levels import save_levels
    from grp_workbench.harness.config import build_config
    from grp_workbench.harness.device import make_policy
    from grp_workbench.rl.ued.ppo import SPECS, UEDTraining

    torch.manual_seed(0)
    path = save_levels([Level(np.zeros((3, 3), dtype=np.uint8), (1, 0), (1, 2), "trivial")], tmp_path / "t.npz")
    spec = SPECS["uniform"]
    config = build_config(spec.config_cls, spec.presets, "tiny", {
        "levels": str(path), "eval_levels": f"trivial={path}", "num_envs": 8, "num_steps": 64, "lr": 3e-3,
        "ppo_epochs": 4, "max_episode_steps": 30, "entropy_coef": 0.01, "recurrent": recurrent})
    student = UEDTraining(config, make_policy("cpu", "fp32"), method="uniform")
    student.eval_sets = {"trivial": student.eval_sets["trivial"] * 16}
    before = student.evaluate()["trivial/solved_rate"]
    for _ in range(15):
        student.update()
    after = student.evaluate()
    assert after["trivial/solved_rate"] >= 0.9 > before
    assert after["trivial/return"] > 0.8


def test_recurrent_ppo_replays_its_rollout_exactly(tmp_path, one_thread):
    """PPO's sequence replay (stored memory, cleared at episode ends) gives back the collection's
    action probabilities and values: the first PPO ratio is exactly 1."""
    import torch

    from grp_workbench.harness.config import build_config
    from grp_workbench.harness.device import make_policy
    from grp_workbench.rl.ued.ppo import SPECS, UEDTraining

    torch.manual_seed(0)
    spec = SPECS["uniform"]
    config = build_config(spec.config_cls, spec.presets, "tiny", {"recurrent": True, "num_envs": 3, "num_steps": 40,
                                                                 "max_episode_steps": 7})
    student = UEDTraining(config, make_policy("cpu", "fp32"), method="uniform")
    student.update()  # the second rollout starts from a non-zero memory
    rollout = student._collect()
    assert rollout["dones"].sum() >= 3  # episodes of <= 7 steps: the memory was cleared mid-rollout
    with torch.no_grad():
        logits, values = student.net.unroll(rollout["images"], rollout["directions"], rollout["initial_memory"],
                                            rollout["dones"])
    log_probs = torch.distributions.Categorical(logits=logits).log_prob(rollout["actions"])
    torch.testing.assert_close(log_probs, rollout["log_probs"], atol=1e-5, rtol=0)
    torch.testing.assert_close(values, rollout["values"], atol=1e-5, rtol=0)


def test_training_after_an_evaluation_plays_only_training_levels(tmp_path, one_thread):
    """Evaluation borrows the training environments; the next rollout must not continue its episodes."""
    from grp_workbench.envs.levels import save_levels
    from grp_workbench.harness.config import build_config
    from grp_workbench.harness.device import make_policy
    from grp_workbench.rl.ued.ppo import SPECS, UEDTraining

    grid = np.zeros((3, 3), dtype=np.uint8)
    train_path = save_levels([Level(grid, (1, 0), (1, 2), "train")], tmp_path / "train.npz")
    eval_path = save_levels([Level(grid, (0, 0), (2, 2), "eval")], tmp_path / "eval.npz")
    spec = SPECS["uniform"]
    config = build_config(spec.config_cls, spec.presets, "tiny", {
        "levels": str(train_path), "eval_levels": f"other={eval_path}", "num_envs": 2, "num_steps": 4,
        "max_episode_steps": 50})
    student = UEDTraining(config, make_policy("cpu", "fp32"), method="uniform")
    student.update()
    student.evaluate()
    stepped_on = []
    for env in student.envs:
        def spy(action, env=env, step=env.step):
            stepped_on.append(env.level.structure)
            return step(action)
        env.step = spy
    student.update()
    assert set(stepped_on) == {"train"}


def test_level_vae_reconstructs_and_dred_trains_on_generated_levels(tmp_path, one_thread):
    import torch

    from grp_workbench.envs.levels import generate_level_set, save_levels
    from grp_workbench.harness.config import build_config
    from grp_workbench.harness.trainer import train
    from grp_workbench.rl.ued.level_vae import SPEC as VAE
    from grp_workbench.rl.ued.level_vae import load_level_vae, slerp
    from grp_workbench.rl.ued.ppo import SPECS

    path = save_levels(generate_level_set(("MazeWall", "ObstaclesHogs2"), 8, seed=0), tmp_path / "train.npz")
    config = build_config(VAE.config_cls, VAE.presets, "tiny", {"levels": str(path), "eval_levels": str(path),
                                                               "total_steps": 300, "eval_every": 300, "batch_size": 32})
    summary = train(VAE, config, str(tmp_path / "vae"), "tiny", quiet=True)
    assert summary["final"]["train/cell_accuracy"] > 0.85  # a 50/50 wall/open guess scores about 0.5
    vae = load_level_vae(tmp_path / "vae")
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(slerp(a, b, 0.5), torch.tensor([0.5 ** 0.5, 0.5 ** 0.5]), atol=1e-6)
    levels = load_levels(path)
    generated, parents = vae.interpolate(vae.encode_levels(levels), levels, 2, 3, torch.Generator().manual_seed(0))
    assert len(generated) == 6 and len(parents) == 6
    assert all(lv.grid[lv.start] in (EMPTY, MOSS) and lv.grid[lv.goal] in (EMPTY, MOSS) for lv in generated)
    dred = SPECS["dred"]
    config = build_config(dred.config_cls, dred.presets, "tiny", {
        "levels": str(path), "eval_levels": f"in_dist={path}", "vae_run": str(tmp_path / "vae"), "num_pairs": 2,
        "interpolations": 3})
    summary = train(dred, config, str(tmp_path / "dred"), "tiny", quiet=True)
    assert summary["status"] == "finished" and 0 <= summary["final"]["in_dist/solved_rate"] <= 1


def test_procgen_plr_student_trains_and_scores_the_levels_it_plays(tmp_path, one_thread):
    pytest.importorskip("procgen", reason="procgen is optional: `make procgen`")
    from grp_workbench.harness.config import build_config
    from grp_workbench.harness.runs import RunDir
    from grp_workbench.harness.trainer import train
    from grp_workbench.rl.ued.procgen_ppo import SPECS

    spec = SPECS["procgen-plr"]
    config = build_config(spec.config_cls, spec.presets, "tiny", {"num_steps": 64, "total_steps": 128,
                                                                 "eval_every": 128, "checkpoint_every": 128})
    summary = train(spec, config, str(tmp_path / "run"), "tiny", quiet=True)
    assert {"train/return", "test/return", "test/solved_rate"} <= set(summary["final"])
    state = RunDir(tmp_path / "run").last_algorithm_state("student", "")
    sampler = state["sampler"]
    assert sampler["seen"].any() and state["plays"].sum() >= 2  # played levels were scored by value_l1
    assert (sampler["scores"][sampler["seen"]] > 0).all()
    with pytest.raises(Exception, match="overlaps the training seeds"):
        build_config(spec.config_cls, spec.presets, "tiny", {"test_start_level": 3})


def test_evaluation_takes_every_structure_and_one_seed_gives_one_result(tmp_path, one_thread):
    """The shipped sets are stored in structure order: a limit takes the same number from every
    structure (the first N levels were one structure), and `rl eval` is reproducible."""
    from typer.testing import CliRunner

    from grp_workbench.harness.cli import app
    from grp_workbench.harness.config import build_config
    from grp_workbench.harness.trainer import train
    from grp_workbench.rl.ued.ppo import LEVEL_SETS, SPECS, stratified

    test_levels = load_levels(LEVEL_SETS / "test.npz")
    structures = {level.structure for level in test_levels}
    assert len({level.structure for level in test_levels[:64]}) < len(structures)  # why first-N was biased
    picked = stratified(test_levels, 64)
    assert {level.structure for level in picked} == structures
    counts = [sum(level.structure == s for level in picked) for s in structures]
    assert len(set(counts)) == 1 and len(picked) == 64

    spec = SPECS["uniform"]
    config = build_config(spec.config_cls, spec.presets, "tiny", {"eval_limit": 8})
    summary = train(spec, config, str(tmp_path / "student"), "tiny", quiet=True)
    per_structure = [k for k in summary["final"] if k.startswith("in_dist/solved_rate/")]
    assert {k.rsplit("/", 1)[1] for k in per_structure} == structures
    command = ["rl", "eval", str(tmp_path / "student"), "--levels", str(LEVEL_SETS / "held_out.npz"), "--limit", "16",
               "--seed", "3"]
    first, second = CliRunner().invoke(app, command), CliRunner().invoke(app, command)
    assert first.exit_code == 0, first.output
    assert first.output == second.output and "95% CI" in first.output and "3 stochastic episodes" in first.output
    not_a_student = CliRunner().invoke(app, ["rl", "eval", str(tmp_path), "--levels", str(LEVEL_SETS / "test.npz")])
    assert "is not a CaveEscape student run" in str(not_a_student.exception)


def test_dred_admits_only_solved_new_levels_even_with_room():
    """The official level store: a generated level enters only with a grounded score above 0, and never
    as a copy of a level the buffer holds (training levels included)."""
    dataset = [_level(i) for i in range(4)]
    buffer = DREDBuffer(dataset, DREDConfig(buffer_size=100), seed=0)
    assert buffer.add_generated(_level(50), score=0.7, max_return=0.0) is None  # room, but never solved
    assert buffer.add_generated(_level(51), score=0.0, max_return=1.0) is None  # solved, no learning signal
    copy = Level(dataset[2].grid.copy(), dataset[2].start, dataset[2].goal, "generated")
    assert buffer.add_generated(copy, score=0.7, max_return=1.0) is None  # a training level again
    assert buffer.add_generated(_level(52), score=0.7, max_return=1.0) is not None
    assert buffer.add_generated(_level(52), score=0.9, max_return=1.0) is None  # already held
    assert buffer.take_counts() == {"proposed": 5, "admitted": 1, "unsolved": 2, "duplicate": 2}
    assert buffer.take_counts()["proposed"] == 0
    assert buffer.dataset_mass() == pytest.approx(1.0)  # c_t = 0: only training levels are replayed


def test_dr_draws_a_uniform_number_of_blocks_in_equal_shares_unfiltered():
    """The official DR baseline: U[0, 60) blocks, wall / lava / moss equally likely, no solvability filter."""
    from grp_workbench.envs.levels import LAVA, is_solvable
    from grp_workbench.rl.ued.ppo import random_blocks_level

    rng = np.random.default_rng(0)
    levels = [random_blocks_level(rng, 13, 60) for _ in range(3000)]
    counts = np.array([int((lv.grid != EMPTY).sum()) for lv in levels])
    assert counts.min() == 0 and counts.max() == 59
    assert abs(np.histogram(counts, bins=6, range=(0, 60))[0] / len(counts) - 1 / 6).max() < 0.03  # uniform
    kinds = np.concatenate([lv.grid[lv.grid != EMPTY] for lv in levels])
    assert all(abs((kinds == kind).mean() - 1 / 3) < 0.02 for kind in (WALL, LAVA, MOSS))
    assert not all(is_solvable(lv) for lv in levels)  # unfiltered: some cannot be solved
    filtered = [random_blocks_level(rng, 13, 60, filtered=True) for _ in range(50)]
    assert all(is_solvable(lv) and int((lv.grid != EMPTY).sum()) == 60 for lv in filtered)


def test_the_level_vae_samples_its_decoder_as_the_official_generator():
    import torch

    from grp_workbench.rl.ued.level_vae import LevelVAE

    torch.manual_seed(0)
    vae = LevelVAE(size=13, latent=8)
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    greedy = vae.decode_levels(z)
    sampled = vae.decode_levels(z, generator=torch.Generator().manual_seed(2))
    again = vae.decode_levels(z, generator=torch.Generator().manual_seed(2))
    assert any((a.grid != b.grid).any() for a, b in zip(greedy, sampled))  # sampling is not argmax
    assert all((a.grid == b.grid).all() and a.start == b.start and a.goal == b.goal for a, b in zip(sampled, again))
    assert all(level.start != level.goal for level in sampled)


def test_plr_first_pass_has_no_gradient_step_and_staleness_ignores_unseen_levels(tmp_path, one_thread):
    import torch

    from grp_workbench.envs.levels import save_levels
    from grp_workbench.harness.config import build_config
    from grp_workbench.harness.device import make_policy
    from grp_workbench.rl.ued.ppo import SPECS, UEDTraining

    levels = [Level(np.zeros((3, 3), dtype=np.uint8), (1, 0), (1, 2), f"l{i}") for i in range(3)]
    train_path = save_levels(levels, tmp_path / "train.npz")
    spec = SPECS["plr"]
    config = build_config(spec.config_cls, spec.presets, "tiny", {
        "levels": str(train_path), "eval_levels": f"x={train_path}", "num_envs": 2, "num_steps": 8,
        "max_episode_steps": 5})
    assert config.plr_unseen_until == 1.0  # PLR's official rho
    student = UEDTraining(config, make_policy("cpu", "fp32"), method="plr")
    before = [p.detach().clone() for p in student.net.parameters()]
    metrics = student.update()  # every episode here starts on an unseen level: only scoring
    assert metrics["gradient_update"] == 0.0 and student.sampler.seen.all()
    assert all(torch.equal(a, b) for a, b in zip(before, student.net.parameters()))
    metrics = student.update()  # replay: PPO steps again
    assert metrics["gradient_update"] == 1.0
    assert not all(torch.equal(a, b) for a, b in zip(before, student.net.parameters()))

    sampler = PLRSampler([_level(i) for i in range(4)], PLRConfig(temperature=1.0, staleness_coef=0.3), seed=0)
    sampler.update(0, 1.0, 0.0)
    sampler.update(1, 2.0, 0.0)
    sampler.last_sampled[:] = [1, 2, 0, 0]
    sampler.episode = 4
    weights = sampler.weights()
    assert weights[2:].sum() == 0.0  # unseen levels get neither score nor staleness weight
    assert weights == pytest.approx(0.7 * np.array([1 / 3, 2 / 3, 0, 0]) + 0.3 * np.array([3 / 5, 2 / 5, 0, 0]))


def test_generated_levels_are_scored_over_a_full_rollout_with_resets(tmp_path, one_thread):
    """The official scoring: num_steps steps on each level, reset to it when an episode ends; the best
    finished return (0 when none finished) grounds the score."""
    import torch

    from grp_workbench.envs.levels import save_levels
    from grp_workbench.harness.config import build_config
    from grp_workbench.harness.device import make_policy
    from grp_workbench.rl.ued.ppo import SPECS, UEDTraining

    torch.manual_seed(0)  # the untrained network's weights: one outcome
    open_grid = np.zeros((3, 3), dtype=np.uint8)
    walled = open_grid.copy()
    walled[:, 1] = WALL
    easy, impossible = Level(open_grid, (1, 0), (1, 1), "easy"), Level(walled, (1, 0), (1, 2), "walled")
    path = save_levels([easy], tmp_path / "train.npz")
    spec = SPECS["uniform"]
    config = build_config(spec.config_cls, spec.presets, "tiny", {
        "levels": str(path), "eval_levels": f"x={path}", "num_envs": 2, "num_steps": 256, "max_episode_steps": 8})
    student = UEDTraining(config, make_policy("cpu", "fp32"), method="uniform")
    returns, scores = student._evaluate_for_scores([easy, impossible])
    assert returns[0] > 0 and returns[1] == 0.0  # the goal next to the start is reached within 256 steps
    assert all(np.isfinite(scores)) and len(scores) == 2
