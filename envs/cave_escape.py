"""CaveEscape: a MiniGrid navigation task parameterized by a level (envs/levels.py).

``gymnasium.make("workbench/CaveEscape-v0", level=level)``; a level sampler changes the level
between episodes with ``env.reset(options={"level": level})``. As in DRED: the interior plus a
wall border, a partial egocentric 5x5 view (``see_through_walls``), a random start direction,
250 steps, reward ``1 - 0.9 * steps / max_steps`` only at the goal, and lava ends the episode with
0. Moss is a passable floor tile. Observations are MiniGrid's ``{"image", "direction", "mission"}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Floor, Goal, Lava, Wall
from minigrid.minigrid_env import MiniGridEnv

from grp_workbench.envs.levels import LAVA, MOSS, WALL, Level, validate_level
from grp_workbench.rl import RLError


class CaveEscapeEnv(MiniGridEnv):
    def __init__(self, level: Level | None = None, size: int = 13, max_steps: int = 250, agent_view_size: int = 5,
                 **kwargs: Any):
        if level is None:  # an open room, so that the environment works before a sampler chooses levels
            grid = np.zeros((size, size), dtype=np.uint8)
            level = Level(grid, (0, 0), (size - 1, size - 1), "empty")
        self.level = level
        height, width = level.grid.shape
        super().__init__(mission_space=MissionSpace(mission_func=lambda: "reach the goal, avoid lava"),
                         width=width + 2, height=height + 2, max_steps=max_steps, see_through_walls=True,
                         agent_view_size=agent_view_size, **kwargs)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if options and "level" in options:
            level = options["level"]
            validate_level(level, "reset(options={'level': ...})")
            if level.grid.shape != self.level.grid.shape:
                raise RLError(f"level of shape {level.grid.shape} given to an env of shape {self.level.grid.shape}; "
                              "make the env with a level of the same size.")
            self.level = level
        return super().reset(seed=seed)

    def _gen_grid(self, width: int, height: int) -> None:
        self.grid = Grid(width, height)
        self.grid.wall_rect(0, 0, width, height)
        for (r, c), code in np.ndenumerate(self.level.grid):
            if code == WALL:
                self.grid.set(c + 1, r + 1, Wall())
            elif code == LAVA:
                self.grid.set(c + 1, r + 1, Lava())
            elif code == MOSS:
                self.grid.set(c + 1, r + 1, Floor("green"))
        goal_r, goal_c = self.level.goal
        self.put_obj(Goal(), goal_c + 1, goal_r + 1)
        start_r, start_c = self.level.start
        self.agent_pos = (start_c + 1, start_r + 1)
        self.agent_dir = self._rand_int(0, 4)
        self.mission = "reach the goal, avoid lava"
