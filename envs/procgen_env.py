"""Procgen through the Gymnasium API, with explicit level control (for PLR-style level samplers).

``gymnasium.make("workbench/Procgen-v0", env_name="maze", start_level=0, num_levels=200,
distribution_mode="easy")``: the level set is fully given by ``start_level`` and ``num_levels``
(procgen's README; ``num_levels=0`` is unlimited). ``reset(options={"level": seed})`` plays exactly
that level (procgen's ``start_level=seed, num_levels=1``), which is how a level sampler chooses levels
with the stock procgen build (PLR used a patched fork to set seeds in place; recreating a one-level
procgen environment costs a few milliseconds once the library is loaded).

Observations are the 64x64x3 ``uint8`` frames, actions the 15 procgen buttons. procgen ends an
episode inside ``act``; the observation returned with ``terminated`` is procgen's next first frame
(gym3 gives no final frame), and its own time limits also end episodes as terminations.

procgen has no wheel for Python >= 3.11; ``make procgen`` installs a working build (README).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from grp_workbench.rl import RLError

DISTRIBUTION_MODES = ("easy", "hard", "extreme", "memory", "exploration")


class ProcgenLevelEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, env_name: str = "maze", start_level: int = 0, num_levels: int = 0,
                 distribution_mode: str = "easy", render_mode: str | None = None):
        try:
            from procgen import ProcgenGym3Env
        except ImportError as err:
            raise RLError("procgen is not installed (it has no wheel for this Python): run `make procgen`, "
                          "see README 'Optional: procgen'.") from err
        if distribution_mode not in DISTRIBUTION_MODES:
            raise RLError(f"distribution_mode={distribution_mode!r} must be one of {', '.join(DISTRIBUTION_MODES)}.")
        if start_level < 0 or num_levels < 0:
            raise RLError(f"start_level={start_level} and num_levels={num_levels} must be >= 0 (0 levels: unlimited).")
        self._factory = ProcgenGym3Env
        self.env_name, self.distribution_mode, self.render_mode = env_name, distribution_mode, render_mode
        self.start_level, self.num_levels = start_level, num_levels
        self.observation_space = gym.spaces.Box(0, 255, (64, 64, 3), dtype=np.uint8)
        self.action_space = gym.spaces.Discrete(15)
        self._env = None
        self._frame = np.zeros((64, 64, 3), dtype=np.uint8)
        self.level: int | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        level = (options or {}).get("level")
        if level is not None:
            start, count = int(level), 1
        else:
            start, count = self.start_level, self.num_levels
        rand_seed = int(self.np_random.integers(2**31 - 1))
        self._env = self._factory(num=1, env_name=self.env_name, start_level=start, num_levels=count,
                                  distribution_mode=self.distribution_mode, rand_seed=rand_seed)
        _, observation, _ = self._env.observe()
        self._frame = observation["rgb"][0]
        self.level = int(self._env.get_info()[0].get("level_seed", start))
        return self._frame, {"level_seed": self.level}

    def step(self, action):
        if self._env is None:
            raise RLError("call reset() before step().")
        self._env.act(np.array([int(action)]))
        reward, observation, first = self._env.observe()
        self._frame = observation["rgb"][0]
        info = self._env.get_info()[0]
        return self._frame, float(reward[0]), bool(first[0]), False, {"level_seed": info.get("level_seed")}

    def render(self):
        return self._frame
