"""PointReach: a point in the plane steered to the origin; a tiny continuous-control task.

Observation (x, y) in [-1, 1]², action a velocity in [-1, 1]² (the point moves 0.1·a, clipped to
the square), reward −‖position‖ per step, 50 steps per episode (a time limit, not a terminal). A
random policy scores about −39 per episode and moving straight to the origin about −2.4 (20
episodes each, measured), so learning shows within seconds: the offline-RL tests and demo use it
where MuJoCo would take hours.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class PointReachEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, step_size: float = 0.1):
        self.step_size = step_size
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.position = np.zeros(2, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-1.0, 1.0, size=2).astype(np.float32)
        return self.position.copy(), {}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        self.position = np.clip(self.position + self.step_size * action, -1.0, 1.0).astype(np.float32)
        reward = -float(np.linalg.norm(self.position))
        return self.position.copy(), reward, False, False, {}


    def snapshot(self) -> dict:
        """What continues an episode exactly (a checkpointed online run saves it)."""
        return {"position": self.position.copy(), "np_random": self.np_random.bit_generator.state}

    def restore(self, state: dict) -> None:
        self.position = np.asarray(state["position"], dtype=np.float32).copy()
        self.np_random.bit_generator.state = state["np_random"]


def expert_action(observation: np.ndarray) -> np.ndarray:
    """Head for the origin at full speed, slowing down within one step of it."""
    return np.clip(-observation / 0.1, -1.0, 1.0).astype(np.float32)
