"""Behaviour policies for locally built D4RL-style datasets: SB3 SAC trained through the harness.

``workbench rl data train-behaviour --set env=hopper`` trains SAC on ``Hopper-v5`` (a resumable harness run).
Every ``eval_every`` environment steps it evaluates the deterministic policy on 10 seeded episodes
and keeps a snapshot of the actor's weights. ``export_behaviour_policies`` then picks, as D4RL did:

* ``expert``: the last snapshot (the policy trained to the end of the budget);
* ``medium``: the first snapshot whose return reaches ``medium_fraction`` of the expert's
  (D4RL: a run "stopped part-way"; we use one third of expert by default);
* ``replay``: every snapshot up to ``medium``, with the environment steps it was in charge of,
  from which ``medium-replay`` is rebuilt (see ``envs/datasets.py``).

and writes them, as float16 actor weights with their returns and budgets, to
``envs/behaviour_policies/<family>.pt`` (committed, so anyone rebuilds the same datasets).
Resuming a killed run restores SAC's networks, optimizers and replay buffer; the interrupted
episode restarts from a reset (a MuJoCo state is not checkpointed), so a resumed run is close to,
not bit-identical with, an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from grp_workbench.envs import make_env
from grp_workbench.harness.config import TrainConfig
from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.runs import RunDir, atomic_torch_save, read_json
from grp_workbench.harness.trainer import MethodSpec
from grp_workbench.rl import RLError
from grp_workbench.rl.offline.datasets import GYMNASIUM_ENV_IDS

POLICY_DIR = Path(__file__).resolve().parent / "behaviour_policies"


def env_id_for(env: str) -> str:
    return GYMNASIUM_ENV_IDS.get(env, env)


@dataclass
class BehaviourConfig(TrainConfig):
    env: str = "hopper"  # hopper | halfcheetah | walker2d, or any Gymnasium id with Box actions
    total_steps: int = 1_000_000  # environment steps
    learning_starts: int = 10_000  # uniform random actions first (Minari's value; SB3's default is 100)
    steps_per_update: int = 1000  # environment steps per trainer update (SAC trains every step within)
    buffer_size: int = 1_000_000
    batch_size: int = 256
    lr: float = 3e-4
    eval_episodes: int = 10
    eval_every: int = 10_000  # also the snapshot interval
    log_every: int = 10_000
    checkpoint_every: int = 50_000
    keep_checkpoints: int = 1  # a checkpoint holds the replay buffer


class BehaviourTraining:
    """SB3 SAC with periodic deterministic evaluation and actor snapshots."""

    main_metric = "return"
    higher_is_better = True

    def __init__(self, config: BehaviourConfig, policy: DevicePolicy):
        from stable_baselines3 import SAC

        self.config = config
        self.env_id = env_id_for(config.env)
        env = make_env(self.env_id)
        if not isinstance(env.action_space, gym.spaces.Box):
            raise RLError(f"env {self.env_id} has {type(env.action_space).__name__} actions; SAC needs a Box.")
        self.model = SAC("MlpPolicy", env, learning_rate=config.lr, buffer_size=min(config.buffer_size,
                         config.total_steps), learning_starts=config.learning_starts, batch_size=config.batch_size,
                         seed=config.seed, device=policy.device, verbose=0)
        self.snapshots: list[dict[str, Any]] = []  # {"step", "return", "actor"}

    def update(self) -> dict[str, float]:
        before = self.model.num_timesteps
        self.model.learn(self.config.steps_per_update, reset_num_timesteps=False, progress_bar=False)
        logger = self.model.logger.name_to_value
        metrics = {k.split("/")[-1]: float(v) for k, v in logger.items() if k.startswith("train/")}
        return metrics | {"steps": self.model.num_timesteps - before}

    def evaluate(self) -> dict[str, float]:
        from grp_workbench.envs.datasets import deterministic_policy, episode_returns

        returns = episode_returns(self.env_id, deterministic_policy(self.model), self.config.eval_episodes, seed=10_000)
        actor = {k: v.detach().cpu().clone() for k, v in self.model.policy.actor.state_dict().items()}
        self.snapshots.append({"step": int(self.model.num_timesteps), "return": float(np.mean(returns)),
                               "actor": actor})
        return {"return": float(np.mean(returns)), "return_std": float(np.std(returns))}

    def state_dict(self) -> dict[str, Any]:
        buffer = self.model.replay_buffer
        filled = buffer.buffer_size if buffer.full else buffer.pos
        arrays = {k: getattr(buffer, k)[:filled].copy() for k in ("observations", "next_observations", "actions",
                                                                    "rewards", "dones", "timeouts")}
        return {"parameters": self.model.get_parameters(), "num_timesteps": self.model.num_timesteps,
                "n_updates": self.model._n_updates, "buffer": arrays, "buffer_pos": buffer.pos,
                "buffer_full": buffer.full, "snapshots": self.snapshots}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.set_parameters(state["parameters"], exact_match=True)
        self.model.num_timesteps, self.model._n_updates = state["num_timesteps"], state["n_updates"]
        buffer = self.model.replay_buffer
        for key, value in state["buffer"].items():
            getattr(buffer, key)[: len(value)] = value
        buffer.pos, buffer.full = state["buffer_pos"], state["buffer_full"]
        self.snapshots = state["snapshots"]
        self.model._last_obs = None  # the next learn() starts from a reset


def _task(config: BehaviourConfig) -> str:
    return f"{config.env}-sac"


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": {"total_steps": 200_000, "checkpoint_every": 20_000},
    "tiny": {"total_steps": 2000, "learning_starts": 500, "steps_per_update": 250, "eval_every": 1000,
             "log_every": 500, "checkpoint_every": 1000, "eval_episodes": 2},
}
SPEC = MethodSpec(name="sac-behaviour", config_cls=BehaviourConfig, presets=PRESETS, build=BehaviourTraining,
                  task=_task)


# ---- export ----------------------------------------------------------------------------------------
def export_behaviour_policies(run_dir: str | Path, medium_fraction: float = 1 / 3,
                              out: str | Path | None = None) -> Path:
    """Pick expert / medium / replay snapshots from a behaviour run's last checkpoint; save them (float16)."""
    run = RunDir(run_dir)
    state = run.last_algorithm_state("checkpoint", "is it a `workbench rl data train-behaviour` run?")
    config = read_json(run.path / "config.json")["config"]
    family = config["env"]
    snapshots = state["snapshots"]
    if not snapshots:
        raise RLError(f"{run_dir} holds no snapshots; train longer than eval_every before exporting.")
    expert = snapshots[-1]
    threshold = medium_fraction * expert["return"]
    medium_index = next((i for i, s in enumerate(snapshots) if s["return"] >= threshold), len(snapshots) - 1)
    medium = snapshots[medium_index]

    def half(actor: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.half() for k, v in actor.items()}

    replay = [{"step": s["step"], "return": s["return"], "actor": half(s["actor"])}
              for s in snapshots[: medium_index + 1]]
    payload = {
        "env_id": env_id_for(family), "family": family, "medium_fraction": medium_fraction,
        "learning_starts": config.get("learning_starts"), "total_steps": config.get("total_steps"),
        "trained_steps": expert["step"],  # below total_steps when the run was stopped early
        "returns": [(s["step"], s["return"]) for s in snapshots],
        "expert": {"step": expert["step"], "return": expert["return"], "actor": half(expert["actor"])},
        "medium": {"step": medium["step"], "return": medium["return"], "actor": half(medium["actor"])},
        "replay": replay,
    }
    path = Path(out) if out else POLICY_DIR / f"{family}.pt"
    atomic_torch_save(payload, path)
    return path


def behaviour_policies_file(family: str, path: str | Path | None = None) -> Path:
    path = Path(path) if path else POLICY_DIR / f"{family}.pt"
    if not path.is_file():
        raise RLError(f"no behaviour policies for {family!r} ({path} missing): train them with "
                      f"`workbench rl data train-behaviour --set env={family}`, then export with `workbench rl data "
                      "export-behaviour`.")
    return path


def load_behaviour_policies(family: str, path: str | Path | None = None) -> dict[str, Any]:
    # tensors and plain containers only: a policies file cannot run code when it is read
    return torch.load(behaviour_policies_file(family, path), map_location="cpu", weights_only=True)


def sac_actor_policy(env_id: str, actor_state: dict[str, torch.Tensor], seed: int):
    """An SB3 SAC model whose actor holds ``actor_state``; ``predict`` samples from it."""
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", make_env(env_id), buffer_size=1, learning_starts=0, seed=seed, device="cpu", verbose=0)
    model.policy.actor.load_state_dict({k: v.float() for k, v in actor_state.items()})
    return model
