"""Gymnasium environment plugins.

Importing ``grp_workbench.envs`` registers them (Gymnasium 1.x no longer loads plugins by entry
point, so ``gymnasium.make("grp_workbench.envs:workbench/PointReach-v0")`` imports this package first,
and the project's own code imports it before making environments).
"""

import warnings

import gymnasium as gym

_mujoco_warnings_routed = False


class MujocoWarning(RuntimeWarning):
    """A warning MuJoCo's C library raised (e.g. a deprecated attribute in an environment's XML)."""


def route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to Python's ``warnings`` (shown once per message) instead of stderr
    and a MUJOCO_LOG.TXT written into the working directory on every environment made."""
    global _mujoco_warnings_routed
    if _mujoco_warnings_routed:
        return
    try:
        import mujoco
    except ImportError:
        return
    mujoco.set_mju_user_warning(lambda message: warnings.warn(f"MuJoCo: {message}", MujocoWarning, stacklevel=2))
    _mujoco_warnings_routed = True


def make_env(env_id: str, **kwargs) -> gym.Env:
    """``gymnasium.make`` for the project's own code: plugins registered, MuJoCo warnings routed."""
    if not env_id.startswith("workbench/"):  # the project's own environments never load MuJoCo
        route_mujoco_warnings()
    return gym.make(env_id, **kwargs)


def register_envs() -> None:
    if "workbench/PointReach-v0" not in gym.registry:
        gym.register("workbench/PointReach-v0", entry_point="grp_workbench.envs.point_reach:PointReachEnv",
                     max_episode_steps=50)
    if "workbench/CaveEscape-v0" not in gym.registry:
        gym.register("workbench/CaveEscape-v0", entry_point="grp_workbench.envs.cave_escape:CaveEscapeEnv")
    if "workbench/Procgen-v0" not in gym.registry:  # needs `make procgen`
        gym.register("workbench/Procgen-v0", entry_point="grp_workbench.envs.procgen_env:ProcgenLevelEnv")


register_envs()
