"""Cave-escape levels: plain arrays, level-set files, solvability, and the ground-truth generator.

Encoding. A level is an ``(H, W)`` ``uint8`` grid of the interior (the environment adds a wall
border) with cell codes ``EMPTY 0, WALL 1, LAVA 2, MOSS 3``, a start ``(row, col)`` and a goal
``(row, col)`` on passable cells, and the name of the task structure it came from. A level set is
an ``.npz`` file with ``grids (N, H, W) uint8``, ``starts (N, 2) int16``, ``goals (N, 2) int16`` and
``structures (N,) str``.

Generator, after DRED's data generation (``cave_escape_512_4ts_varp``): a Wave Function Collapse
layout of a task structure (MiniGrid's WFC, reading the pattern images of
``../shared/datasets/wfc_patterns`` since the minigrid wheel lacks them); only the largest
connected open area is kept; the goal is placed uniformly on it; a fraction U[0.1, 0.25] of the
wall cells becomes lava, drawn with probability rising with their shortest-path distance from the
goal (rank weights, temperature 1: lava far from the goal); a fraction U[0.1, 0.25] of the open
cells becomes moss, drawn near the goal (inverse distance ranks); the start is placed uniformly on
the remaining open cells. Every generated level is solvable by construction (checked).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grp_workbench.harness.data import find_dataset_dir
from grp_workbench.rl import RLError

EMPTY, WALL, LAVA, MOSS = 0, 1, 2, 3
CELL_NAMES = ("empty", "wall", "lava", "moss")
PASSABLE = (EMPTY, MOSS)
# DRED's four training task structures (MiniGrid WFC preset names)
TRAIN_STRUCTURES = ("ObstaclesHogs3", "MazeWall", "MazePaths", "RoomsOffice")
# held out for out-of-distribution transfer: the paper's 14 structures never seen in training, 8 levels
# each (dred minigrid_level_generation/conf/data_generation/cave_escape_112_14ts_varp.yaml,
# task_structure_split; its dungeon_spirals_neg is MiniGrid's DungeonSpirals, dungeon_ its Dungeon).
# MazeKnot, ObstaclesHogs2 and Skew2 are among MiniGrid's "inconsistent" presets (WFC may reach a
# contradiction): wfc_layout retries a failed layout with the next draw of the same generator.
HELD_OUT_STRUCTURES = ("ObstaclesBlackdots", "ObstaclesHogs2", "ObstaclesAngular", "DungeonMazeScaled", "MazeSimple",
                       "RoomsFabric", "DungeonRooms", "MazeKnot", "Skew2", "DungeonSpirals", "MazeSpirals",
                       "DungeonLessRooms", "RoomsMagicOffice", "Dungeon")
HELD_OUT_PER_STRUCTURE = 8


@dataclass
class Level:
    grid: np.ndarray  # (H, W) uint8 cell codes of the interior
    start: tuple[int, int]
    goal: tuple[int, int]
    structure: str = ""

    def __post_init__(self) -> None:
        self.grid = np.asarray(self.grid, dtype=np.uint8)
        self.start, self.goal = tuple(int(v) for v in self.start), tuple(int(v) for v in self.goal)


def distances_from(grid: np.ndarray, source: tuple[int, int]) -> np.ndarray:
    """Shortest-path length (4-neighbour moves over passable cells) from ``source``; -1 if unreachable."""
    h, w = grid.shape
    distance = np.full((h, w), -1, dtype=np.int32)
    distance[source] = 0
    queue = deque([source])
    while queue:
        r, c = queue.popleft()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nr, nc = r + dr, c + dc
            if 0 <= nr < h and 0 <= nc < w and distance[nr, nc] < 0 and grid[nr, nc] in PASSABLE:
                distance[nr, nc] = distance[r, c] + 1
                queue.append((nr, nc))
    return distance


def is_solvable(level: Level) -> bool:
    return bool(distances_from(level.grid, level.goal)[level.start] >= 0)


# ---- level-set files -----------------------------------------------------------------------------
def save_levels(levels: list[Level], path: str | Path) -> Path:
    """Write a level set atomically (a crash never leaves a half-written file)."""
    if not levels:
        raise RLError("save_levels: no levels to save.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"grids": np.stack([lv.grid for lv in levels]).astype(np.uint8),
              "starts": np.array([lv.start for lv in levels], dtype=np.int16),
              "goals": np.array([lv.goal for lv in levels], dtype=np.int16),
              "structures": np.array([lv.structure for lv in levels])}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def load_levels(path: str | Path) -> list[Level]:
    """Read and validate a level set; a malformed file gives one error naming the file, key and fix."""
    path = Path(path)
    if not path.is_file():
        raise RLError(f"level file {path} does not exist; build one with `workbench rl levels build`.")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise RLError(f"{path} is not a readable .npz level set ({err}).") from err
    for key in ("grids", "starts", "goals"):
        if key not in arrays:
            raise RLError(f"{path}: missing key '{key}'; a level set holds grids (N,H,W), starts (N,2), goals (N,2).")
    grids, starts, goals = arrays["grids"], arrays["starts"], arrays["goals"]
    if grids.ndim != 3 or starts.shape != (len(grids), 2) or goals.shape != (len(grids), 2):
        raise RLError(f"{path}: grids {grids.shape}, starts {starts.shape}, goals {goals.shape} do not agree; "
                      "expected (N,H,W), (N,2), (N,2).")
    if not len(grids):
        raise RLError(f"{path} holds no levels; build a level set with `workbench rl levels build`.")
    structures = arrays.get("structures", np.array([""] * len(grids)))
    if structures.shape != (len(grids),):
        raise RLError(f"{path}: key 'structures' has shape {structures.shape} for {len(grids)} levels; it needs one "
                      "name per level (or leave the key out).")
    check_cell_codes(grids, f"{path}: key 'grids'")  # before Level turns them into uint8
    levels = []
    for i, (grid, start, goal) in enumerate(zip(grids, starts, goals)):
        level = Level(grid, tuple(int(x) for x in start), tuple(int(x) for x in goal), str(structures[i]))
        validate_level(level, f"{path}: level {i}")
        levels.append(level)
    return levels


def check_cell_codes(grids: np.ndarray, where: str) -> None:
    """Cell codes must be the integers 0 empty, 1 wall, 2 lava, 3 moss (no negatives, no floats)."""
    if not (np.issubdtype(grids.dtype, np.integer) or grids.dtype == bool):
        raise RLError(f"{where}: cell codes of dtype {grids.dtype}; they are integers 0 empty, 1 wall, 2 lava, 3 moss.")
    if grids.size and (grids.min() < 0 or grids.max() > MOSS):
        bad = int(grids.min()) if grids.min() < 0 else int(grids.max())
        raise RLError(f"{where}: cell code {bad}; codes are 0 empty, 1 wall, 2 lava, 3 moss.")


def validate_level(level: Any, where: str = "level") -> None:
    """One line naming what is wrong with a level: its type, grid shape and codes, start and goal."""
    if not isinstance(level, Level):
        raise RLError(f"{where} is a {type(level).__name__}, not a Level (grid, start, goal, structure).")
    grid = np.asarray(level.grid)
    if grid.ndim != 2 or grid.size < 2:
        raise RLError(f"{where}: grid of shape {grid.shape}; a level is a 2-D grid of at least 2 cells.")
    check_cell_codes(grid, where)
    for name, cell in (("start", level.start), ("goal", level.goal)):
        inside = len(cell) == 2 and all(0 <= x < n for x, n in zip(cell, grid.shape))
        if not inside or grid[tuple(cell)] not in PASSABLE:
            raise RLError(f"{where}: {name} {tuple(cell)} is outside the grid or on a wall/lava cell; starts and goals "
                          "must be on empty or moss cells.")
    if tuple(level.start) == tuple(level.goal):
        raise RLError(f"{where}: start and goal are the same cell {tuple(level.start)}; place them apart.")


# ---- generator -----------------------------------------------------------------------------------
def _rank_choice(rng: np.random.Generator, cells: np.ndarray, scores: np.ndarray, k: int,
                 temperature: float = 1.0) -> np.ndarray:
    """``k`` cells without replacement, with probability ∝ (1/rank)^(1/T), rank 1 = highest score."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    weights = (1.0 / ranks) ** (1.0 / temperature)
    return cells[rng.choice(len(cells), size=k, replace=False, p=weights / weights.sum())]


def wfc_layout(structure: str, size: int, rng: np.random.Generator, attempts: int = 100) -> np.ndarray:
    """A WFC wall/empty layout of ``size`` x ``size`` (WALL / EMPTY codes)."""
    from minigrid.envs.wfc.config import WFC_PRESETS_ALL
    from minigrid.envs.wfc.wfclogic.control import execute_wfc

    if structure not in WFC_PRESETS_ALL:
        raise RLError(f"task structure {structure!r} is not a MiniGrid WFC preset; choose from "
                      f"{', '.join(sorted(WFC_PRESETS_ALL))}.")
    patterns = find_dataset_dir("wfc_patterns")
    if patterns is None:
        raise RLError("the WFC pattern images are missing (the minigrid wheel does not ship them): put them in "
                      "$WORKBENCH_DATA/wfc_patterns (see ../shared/datasets/wfc_patterns/README.md).")
    config = WFC_PRESETS_ALL[structure]
    config = dataclasses.replace(config, pattern_path=patterns / Path(config.pattern_path).name)
    pattern, _ = execute_wfc(attempt_limit=attempts, output_size=(size, size), np_random=rng, **config.wfc_kwargs)
    if pattern is None:
        raise RLError(f"WFC could not generate a {structure} layout in {attempts} attempts.")
    return np.where((pattern == 0).all(axis=-1), WALL, EMPTY).astype(np.uint8)


def largest_open_area(grid: np.ndarray) -> np.ndarray:
    """The layout with every open cell outside its largest 4-connected open area walled in."""
    open_cells = list(zip(*np.nonzero(grid == EMPTY)))
    seen = np.zeros(grid.shape, dtype=bool)
    best: np.ndarray | None = None
    for cell in open_cells:
        if seen[cell]:
            continue
        component = distances_from(grid, cell) >= 0
        seen |= component
        if best is None or component.sum() > best.sum():
            best = component
    out = np.full_like(grid, WALL)
    if best is not None:
        out[best] = EMPTY
    return out


def generate_level(structure: str, rng: np.random.Generator, size: int = 13,
                   lava_fraction: tuple[float, float] = (0.1, 0.25),
                   moss_fraction: tuple[float, float] = (0.1, 0.25)) -> Level:
    for _ in range(20):
        grid = largest_open_area(wfc_layout(structure, size, rng))
        open_cells = np.argwhere(grid == EMPTY)
        if len(open_cells) >= 4:
            break
    else:
        raise RLError(f"{structure}: no layout with an open area of 4 cells in 20 tries.")
    goal = tuple(open_cells[rng.integers(len(open_cells))])
    distance = distances_from(grid, goal)
    # lava replaces walls, far from the goal (distance of a wall = that of its nearest open neighbour)
    walls = np.argwhere(grid == WALL)
    padded = np.pad(np.where(distance >= 0, distance, 10**6), 1, constant_values=10**6)
    wall_distance = np.array([min(padded[r, c + 1], padded[r + 2, c + 1], padded[r + 1, c], padded[r + 1, c + 2])
                              for r, c in walls], dtype=float)
    n_lava = int(round(rng.uniform(*lava_fraction) * len(walls)))
    if n_lava:
        wall_distance[wall_distance >= 10**6] = -1  # walls with no open neighbour: least likely
        for r, c in _rank_choice(rng, walls, wall_distance, n_lava):
            grid[r, c] = LAVA
    # moss on open cells near the goal, never on the goal
    candidates = np.array([cell for cell in open_cells if tuple(cell) != goal])
    n_moss = min(int(round(rng.uniform(*moss_fraction) * len(open_cells))), len(candidates) - 1)
    if n_moss > 0:
        near = -distance[candidates[:, 0], candidates[:, 1]].astype(float)
        for r, c in _rank_choice(rng, candidates, near, n_moss):
            grid[r, c] = MOSS
    # the start as the official dataset generation places it: on a passable cell (moss allowed) at the
    # median shortest-path distance from the goal, uniformly among the cells at that distance
    distance = distances_from(grid, goal)
    passable = np.array([cell for cell in np.argwhere(np.isin(grid, PASSABLE) & (distance > 0))])
    reach = distance[passable[:, 0], passable[:, 1]]
    median = np.median(reach)
    at_median = passable[np.abs(reach - median) == np.abs(reach - median).min()]
    start = tuple(int(x) for x in at_median[rng.integers(len(at_median))])
    level = Level(grid, start, goal, structure)
    if not is_solvable(level):  # cannot happen: lava only replaces walls, and moss is passable
        raise RLError(f"generated {structure} level is not solvable; this is a bug in envs/levels.py.")
    return level


LEVEL_SET_STREAMS = {"train": 0, "test": 1, "held_out": 2}


def generate_level_set(structures: tuple[str, ...] | list[str], per_structure: int, seed: int,
                       size: int = 13, progress: bool = False, stream: int = 0) -> list[Level]:
    """``per_structure`` levels of each structure, from one seeded generator (same seed, same set).
    ``stream`` (LEVEL_SET_STREAMS) gives each set of one build its own random stream, seeded with
    (seed, stream): sets of adjacent seeds never share a stream (seed + 1 for the test set did: a
    build with seed 123457 made the shipped test levels again, as a training set)."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng([seed, stream])
    jobs = [s for s in structures for _ in range(per_structure)]
    return [generate_level(s, rng, size) for s in tqdm(jobs, desc="levels", disable=not progress)]


def level_key(level: Level) -> bytes:
    """A level's content (grid, start, goal), for recognising copies whatever their label."""
    return level.grid.tobytes() + bytes(level.grid.shape) + np.array([*level.start, *level.goal]).tobytes()


def shared_levels(sets: dict[str, list[Level]]) -> list[tuple[str, str, int]]:
    """(set a, set b, count) for every pair of sets holding the same level (grid, start and goal)."""
    keys = {name: {level_key(level) for level in levels} for name, levels in sets.items()}
    names = list(sets)
    return [(a, b, len(keys[a] & keys[b])) for i, a in enumerate(names) for b in names[i + 1:]
            if keys[a] & keys[b]]


# ---- pictures ------------------------------------------------------------------------------------
COLOURS = {0: (245, 245, 245), 1: (70, 70, 70), 2: (235, 110, 20), 3: (140, 200, 120)}
START_COLOUR, GOAL_COLOUR = (40, 90, 230), (20, 150, 40)


def level_image(level: Level) -> np.ndarray:
    """An RGB picture of a level: one pixel per cell (empty light, wall dark, lava orange, moss green,
    start blue, goal dark green)."""
    image = np.zeros((*level.grid.shape, 3), dtype=np.uint8)
    for code, colour in COLOURS.items():
        image[level.grid == code] = colour
    image[level.start] = START_COLOUR
    image[level.goal] = GOAL_COLOUR
    return image


def save_level_picture(rows: dict[str, list[Level]], path: str | Path, per_row: int = 8) -> Path:
    """A figure with one row of levels per label (e.g. training levels beside generated ones)."""
    from grp_workbench.harness.report import plot_image_grid

    rows = {label: levels[:per_row] for label, levels in rows.items()}
    return plot_image_grid({label: [level_image(lv) for lv in levels] for label, levels in rows.items()}, path,
                           columns=per_row, titles={label: [lv.structure[:14] for lv in levels]
                                                    for label, levels in rows.items()})
