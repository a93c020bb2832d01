"""Gymnasium environment plugins.

Importing ``envs`` registers them (Gymnasium 1.x no longer loads plugins by entry point, so
``gymnasium.make("envs:workbench/PointReach-v0")`` imports this package first, and the project's own
code imports it before making environments).
"""

import gymnasium as gym


def register_envs() -> None:
    if "workbench/PointReach-v0" not in gym.registry:
        gym.register("workbench/PointReach-v0", entry_point="envs.point_reach:PointReachEnv", max_episode_steps=50)
    if "workbench/CaveEscape-v0" not in gym.registry:
        gym.register("workbench/CaveEscape-v0", entry_point="envs.cave_escape:CaveEscapeEnv")
    if "workbench/Procgen-v0" not in gym.registry:  # needs `make procgen`
        gym.register("workbench/Procgen-v0", entry_point="envs.procgen_env:ProcgenLevelEnv")


register_envs()
