import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from grp_workbench import envs  # noqa: F401  (registers workbench/CaveEscape-v0)
from grp_workbench.envs.levels import (
    EMPTY,
    LAVA,
    MOSS,
    WALL,
    Level,
    generate_level_set,
    is_solvable,
    load_levels,
    save_levels,
)
from grp_workbench.rl import RLError


def _corridor(cells):
    """A 1-row level: start at the left end, goal at the right end, ``cells`` in between."""
    grid = np.array([[EMPTY, *cells, EMPTY]], dtype=np.uint8)
    return Level(grid, (0, 0), (0, grid.shape[1] - 1), "corridor")


def test_level_files_round_trip(tmp_path):
    levels = [_corridor([MOSS, EMPTY]), _corridor([EMPTY, MOSS])]
    loaded = load_levels(save_levels(levels, tmp_path / "set.npz"))
    for a, b in zip(levels, loaded):
        assert np.array_equal(a.grid, b.grid) and a.start == b.start and a.goal == b.goal
        assert b.structure == "corridor"


def test_generated_levels_are_solvable_and_use_every_cell_kind():
    levels = generate_level_set(("MazeWall", "ObstaclesHogs2"), per_structure=3, seed=0)
    assert len(levels) == 6 and all(is_solvable(level) for level in levels)
    codes = set(np.concatenate([level.grid.ravel() for level in levels]).tolist())
    assert {EMPTY, WALL, LAVA, MOSS} <= codes
    again = generate_level_set(("MazeWall", "ObstaclesHogs2"), per_structure=3, seed=0)
    assert all(np.array_equal(a.grid, b.grid) and a.start == b.start for a, b in zip(levels, again))


def test_unsolvable_level_is_detected():
    assert not is_solvable(_corridor([WALL]))
    assert not is_solvable(_corridor([LAVA]))
    assert is_solvable(_corridor([MOSS]))


def test_cave_escape_follows_the_gymnasium_api_and_rewards_only_the_goal():
    env = gym.make("workbench/CaveEscape-v0", level=_corridor([EMPTY]))
    check_env(env.unwrapped, skip_render_check=True)
    env.reset(seed=0)
    env.unwrapped.agent_dir = 0  # facing the goal (east)
    reward, terminated = 0.0, False
    for _ in range(2):
        _, reward, terminated, _, _ = env.step(env.unwrapped.actions.forward)
    assert terminated and reward > 0.9
    env.reset(seed=0, options={"level": _corridor([LAVA])})
    env.unwrapped.agent_dir = 0
    _, reward, terminated, _, _ = env.step(env.unwrapped.actions.forward)
    assert terminated and reward == 0.0


def test_cave_escape_runs_as_a_vectorized_environment():
    levels = [_corridor([EMPTY]), _corridor([LAVA])]
    vector = gym.make_vec("workbench/CaveEscape-v0", num_envs=2, vectorization_mode="sync",
                          vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}, level=levels[0])
    observations, _ = vector.reset(seed=0, options={"level": levels[1]})
    assert observations["image"].shape == (2, 5, 5, 3)
    for _ in range(5):
        observations, rewards, terminated, truncated, _ = vector.step(vector.action_space.sample())
    assert observations["image"].shape == (2, 5, 5, 3) and rewards.shape == (2,)
    vector.close()


def test_malformed_level_files_name_the_key(tmp_path):
    np.savez(tmp_path / "missing.npz", grids=np.zeros((1, 3, 3), np.uint8), starts=np.zeros((1, 2), np.int16))
    with pytest.raises(RLError, match="missing key 'goals'"):
        load_levels(tmp_path / "missing.npz")
    np.savez(tmp_path / "code.npz", grids=np.full((1, 3, 3), 7, np.uint8), starts=np.zeros((1, 2), np.int16),
             goals=np.ones((1, 2), np.int16))
    with pytest.raises(RLError, match="cell code 7"):
        load_levels(tmp_path / "code.npz")
    grid = np.zeros((1, 3, 3), np.uint8)
    grid[0, 0, 0] = WALL
    np.savez(tmp_path / "wall.npz", grids=grid, starts=np.zeros((1, 2), np.int16), goals=np.ones((1, 2), np.int16))
    with pytest.raises(RLError, match="level 0: start \\(0, 0\\) is outside the grid or on a wall"):
        load_levels(tmp_path / "wall.npz")
    with pytest.raises(RLError, match="levels build"):
        load_levels(tmp_path / "absent.npz")


def test_procgen_adapter_controls_the_level():
    pytest.importorskip("procgen", reason="procgen is optional: `make procgen`")
    env = gym.make("workbench/Procgen-v0", env_name="maze", start_level=0, num_levels=10)
    check_env(env.unwrapped, skip_render_check=True)
    first, info = env.reset(seed=0, options={"level": 42})
    again, info_again = env.reset(seed=1, options={"level": 42})
    assert info["level_seed"] == info_again["level_seed"] == 42
    assert np.array_equal(first, again)  # one level, one layout
    other, _ = env.reset(seed=0, options={"level": 7})
    assert not np.array_equal(first, other)
    vector = gym.vector.SyncVectorEnv([lambda: gym.make("workbench/Procgen-v0", env_name="maze")] * 2)
    observations, _ = vector.reset(seed=0)
    assert observations.shape == (2, 64, 64, 3)


def test_builds_with_adjacent_seeds_share_no_level_and_a_held_out_set_builds_alone(tmp_path):
    """Each set draws from its own (seed, set) stream: seed + 1's training set is not seed's test set."""
    from typer.testing import CliRunner

    from grp_workbench.envs.levels import LEVEL_SET_STREAMS, generate_level_set, shared_levels
    from grp_workbench.harness.cli import app

    structures = ("MazeWall",)
    test_of_seed = generate_level_set(structures, 4, seed=7, stream=LEVEL_SET_STREAMS["test"])
    train_of_next = generate_level_set(structures, 4, seed=8, stream=LEVEL_SET_STREAMS["train"])
    train_of_seed = generate_level_set(structures, 4, seed=7, stream=LEVEL_SET_STREAMS["train"])
    assert not shared_levels({"test 7": test_of_seed, "train 8": train_of_next, "train 7": train_of_seed})
    assert shared_levels({"a": train_of_seed, "b": list(train_of_seed)}) == [("a", "b", 4)]
    out = tmp_path / "sets"
    result = CliRunner().invoke(app, ["rl", "levels", "build", "--out", str(out), "--sets", "held_out",
                                      "--held-out-structures", "MazeSimple,Skew2", "--held-out-per-structure", "2"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == ["held_out.npz"]
    bad = CliRunner().invoke(app, ["rl", "levels", "build", "--out", str(out), "--sets", "valid"])
    assert "unknown set(s) valid; choose from train, test, held_out" in str(bad.exception)


@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(grids=a["grids"][:0], starts=a["starts"][:0], goals=a["goals"][:0]), "holds no levels"),
    (lambda a: a.update(structures=np.array(["x"])), "key 'structures' has shape \\(1,\\) for 2 levels"),
    (lambda a: a["grids"].__setitem__((0, 1, 1), -1), "cell code -1"),
    (lambda a: a.update(grids=a["grids"].astype(float) + 0.5), "cell codes of dtype float64"),
    (lambda a: a.update(goals=a["starts"].copy()), "start and goal are the same cell"),
])
def test_a_malformed_level_set_is_one_line_naming_the_problem(tmp_path, change, message):
    from grp_workbench.rl import RLError

    arrays = {"grids": np.zeros((2, 4, 4), np.int64), "starts": np.array([[0, 0], [0, 0]]),
              "goals": np.array([[3, 3], [3, 3]]), "structures": np.array(["a", "b"])}
    change(arrays)
    np.savez(tmp_path / "set.npz", **arrays)
    with pytest.raises(RLError, match=message):
        load_levels(tmp_path / "set.npz")


def test_reset_with_a_malformed_level_and_an_unsolvable_evaluation_set_are_one_line(tmp_path):
    from grp_workbench.envs.cave_escape import CaveEscapeEnv
    from grp_workbench.envs.levels import WALL, Level, save_levels
    from grp_workbench.rl import RLError
    from grp_workbench.rl.ued.ppo import require_solvable

    grid = np.zeros((4, 4), np.int64)
    env = CaveEscapeEnv(Level(grid, (0, 0), (3, 3), "ok"), size=4)
    with pytest.raises(RLError, match="reset.*start and goal are the same cell"):
        env.reset(options={"level": Level(grid, (1, 1), (1, 1), "bad")})
    with pytest.raises(RLError, match="reset.*is a dict, not a Level"):
        env.reset(options={"level": {"grid": grid}})
    walled = grid.copy()
    walled[:, 1] = WALL  # the goal side is cut off
    path = save_levels([Level(grid, (0, 0), (3, 3), "ok"), Level(walled, (0, 0), (3, 3), "cut")], tmp_path / "e.npz")
    with pytest.raises(RLError, match="1 of 2 evaluation levels cannot be solved \\(first: level 1\\)"):
        require_solvable(load_levels(path), path)


def test_the_start_sits_at_the_median_shortest_path_distance_from_the_goal():
    from grp_workbench.envs.levels import PASSABLE, distances_from, generate_level

    rng = np.random.default_rng(0)
    for structure in ("MazeWall", "ObstaclesHogs3"):
        level = generate_level(structure, rng)
        distance = distances_from(level.grid, level.goal)
        reach = distance[np.isin(level.grid, PASSABLE) & (distance > 0)]
        gap = np.abs(reach - np.median(reach)).min()
        assert abs(distance[level.start] - np.median(reach)) == gap  # the cell nearest the median distance
