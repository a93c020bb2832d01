"""PPO students on CaveEscape levels chosen by a level sampler: DR, uniform, PLR or DRED.

One trainer update is one cycle of the official runner (uoe-agents/dred, adversarial_runner.py):
``num_envs`` environments each play ``num_steps`` steps on levels the sampler hands out (a new
level whenever an episode ends), PPO updates the student, and every level played is scored by its
mean |GAE advantage| (PLR's value_l1) and its best return. DRED then generates a batch of levels
from its VAE, plays them once with no gradient update, and offers them to its buffer.

The network follows the paper's shape: Conv2d(3 -> 16, 3x3) on the 5x5 egocentric view, the
direction one-hot through Linear(4, 5), a shared core, and actor / critic heads MLP(32, 32). The
core is the paper's LSTM(256) with ``recurrent=true`` (PPO then replays each environment's rollout
as a sequence from its stored memory, reset at every episode end) or a 256-unit ReLU layer
(``recurrent=false``, the default and the CPU benchmark's setting). Paper defaults in
``UEDConfig``; evaluation is zero-shot: one episode per level of each evaluation level set.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from grp_workbench import envs  # noqa: F401  (registers workbench/CaveEscape-v0)
from grp_workbench.envs.cave_escape import CaveEscapeEnv
from grp_workbench.envs.levels import LAVA, MOSS, WALL, Level, is_solvable, load_levels
from grp_workbench.harness.config import TrainConfig
from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.runs import RunDir
from grp_workbench.harness.trainer import MethodSpec
from grp_workbench.rl import RLError
from grp_workbench.rl.ued.samplers import DREDBuffer, DREDConfig, PLRConfig, PLRSampler, UniformSampler

METHODS = ("dr", "uniform", "plr", "dred")
LEVEL_SETS = Path(__file__).resolve().parents[2] / "envs" / "level_sets"


@dataclass
class UEDConfig(TrainConfig):
    levels: str = ""  # training level set (.npz); default envs/level_sets/train.npz
    eval_levels: str = ""  # comma-separated name=path; default test (in_dist) and held_out
    eval_limit: int = 0  # > 0: evaluate on N levels of each set, the same number from every structure
    eval_episodes: int = 3  # episodes per evaluation level, stochastic policy (eval_greedy: one, argmax)
    eval_greedy: bool = False
    num_envs: int = 32  # the paper: 36 processes
    num_steps: int = 256
    lr: float = 1e-4
    adam_eps: float = 1e-5
    gamma: float = 0.995
    gae_lambda: float = 0.95
    clip: float = 0.2
    ppo_epochs: int = 5
    num_minibatches: int = 1
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5
    hidden: int = 256
    recurrent: bool = False  # the paper's LSTM core; false: a feed-forward ReLU layer of the same width
    max_episode_steps: int = 250
    # samplers (PLR / DRED; the paper's values)
    plr_temperature: float = 0.1
    # PLR's rho: unseen training levels are played first while fewer than this fraction have been
    # seen, with no gradient update on those rollouts (the official runner; PLR's config 1.0)
    plr_unseen_until: float = 1.0
    staleness_coef: float = 0.3
    secondary_temperature: float = 1.0
    buffer_size: int = 4000
    dr_blocks: int = 60  # DR: up to this many blocks (the paper's "60 blocks uniform" random levels)
    vae_decode: str = "sample"  # DRED: sample the decoder's categorical outputs (official) | argmax
    dr_generator: str = "official"  # official: U[0, 60) blocks, equal shares, unfiltered | filtered (earlier)
    # DRED generation
    vae_run: str = ""  # a `workbench rl train level-vae` run directory (its last checkpoint)
    num_pairs: int = 6
    interpolations: int = 6
    total_steps: int = 2_000_000  # environment steps
    eval_every: int = 200_000
    log_every: int = 8192
    checkpoint_every: int = 200_000



Memory = tuple[torch.Tensor, torch.Tensor] | None  # the LSTM's (h, c); None for the feed-forward core


class ActorCritic(nn.Module):
    def __init__(self, n_actions: int = 7, hidden: int = 256, recurrent: bool = False):
        super().__init__()
        self.hidden, self.recurrent = hidden, recurrent
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten())  # 5x5 -> 16x3x3
        self.direction = nn.Linear(4, 5)
        features = 16 * 9 + 5
        self.core = (nn.LSTMCell(features, hidden) if recurrent
                     else nn.Sequential(nn.Linear(features, hidden), nn.ReLU()))
        self.actor = nn.Sequential(nn.Linear(hidden, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                   nn.Linear(32, n_actions))
        self.critic = nn.Sequential(nn.Linear(hidden, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))

    def initial_memory(self, n: int) -> Memory:
        return (torch.zeros(n, self.hidden), torch.zeros(n, self.hidden)) if self.recurrent else None

    def forward(self, image: torch.Tensor, direction: torch.Tensor,
                memory: Memory = None) -> tuple[torch.Tensor, torch.Tensor, Memory]:
        h = torch.cat([self.conv(image), self.direction(F.one_hot(direction, 4).float())], dim=1)
        if self.recurrent:
            memory = self.core(h, memory if memory is not None else self.initial_memory(len(h)))
            h = memory[0]
        else:
            h = self.core(h)
        return self.actor(h), self.critic(h).squeeze(-1), memory

    def unroll(self, images: torch.Tensor, directions: torch.Tensor, memory: Memory,
               dones: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and values of (T, N) step sequences from ``memory``; the memory is cleared after a
        step that ended an episode, as during collection."""
        logits, values = [], []
        for t in range(images.shape[0]):
            step_logits, step_value, memory = self(images[t], directions[t], memory)
            logits.append(step_logits)
            values.append(step_value)
            memory = forget_ended(memory, dones[t])
        return torch.stack(logits), torch.stack(values)


def forget_ended(memory: Memory, dones: torch.Tensor) -> Memory:
    """Zero the memory of environments whose episode just ended (their next step starts a new one)."""
    if memory is None:
        return None
    keep = (1.0 - dones).unsqueeze(1)
    return memory[0] * keep, memory[1] * keep


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor,
                gamma: float, gae_lambda: float) -> torch.Tensor:
    """GAE(lambda) advantages of a (T, N) rollout; an episode end (done) stops bootstrapping."""
    advantages = torch.zeros_like(rewards)
    gae = torch.zeros_like(last_value)
    for t in reversed(range(rewards.shape[0])):
        next_value = last_value if t == rewards.shape[0] - 1 else values[t + 1]
        delta = rewards[t] + gamma * next_value * (1 - dones[t]) - values[t]
        gae = delta + gamma * gae_lambda * (1 - dones[t]) * gae
        advantages[t] = gae
    return advantages


def ppo_losses(logits: torch.Tensor, value: torch.Tensor, data: dict[str, torch.Tensor],
               clip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped-ratio policy loss (minibatch-normalized advantages), clipped value loss, entropy."""
    dist = torch.distributions.Categorical(logits=logits)
    ratio = torch.exp(dist.log_prob(data["actions"]) - data["log_probs"])
    adv = data["advantages"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
    old_value = data["values"]
    clipped = old_value + (value - old_value).clamp(-clip, clip)
    value_loss = 0.5 * torch.max((value - data["returns"]) ** 2, (clipped - data["returns"]) ** 2).mean()
    return policy_loss, value_loss, dist.entropy().mean()


def ppo_step(optimizer: torch.optim.Optimizer, parameters: Any, logits: torch.Tensor, value: torch.Tensor,
             data: dict[str, torch.Tensor], cfg: Any) -> dict[str, float]:
    """One PPO gradient step on a minibatch (``cfg``: clip, value_coef, entropy_coef, max_grad_norm)."""
    policy_loss, value_loss, entropy = ppo_losses(logits, value, data, cfg.clip)
    loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(parameters, cfg.max_grad_norm)
    optimizer.step()
    return {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item()}


def score_levels(sampler: Any, level_of_step: np.ndarray, advantages: torch.Tensor,
                 finished: list[tuple[int, float]]) -> None:
    """Tell the sampler each played level's value_l1 (mean |GAE advantage| over its steps in this
    rollout) and the best return of its episodes that ended."""
    magnitude = advantages.abs().numpy()
    best: dict[int, float] = {}
    for level_id, episode_return in finished:
        best[level_id] = max(best.get(level_id, -np.inf), episode_return)
    for level_id in np.unique(level_of_step):
        score = float(magnitude[level_of_step == level_id].mean())
        sampler.update(int(level_id), score, best.get(int(level_id), 0.0))


def encode_observations(observations: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.as_tensor(np.stack([o["image"] for o in observations]), dtype=torch.float32).permute(0, 3, 1, 2)
    direction = torch.as_tensor([int(o["direction"]) for o in observations], dtype=torch.long)
    return image, direction


def random_blocks_level(rng: np.random.Generator, size: int = 13, blocks: int = 60, filtered: bool = False) -> Level:
    """DR's generator. Official (``filtered=False``, dred ``envs/multigrid/adversarial.py``, the
    VariableBlocks CaveEscape env): a number of blocks drawn uniformly from [0, blocks), each a wall,
    lava or moss with equal probability, start and goal on other random cells, no solvability check.
    ``filtered=True`` is this project's earlier variant (exactly ``blocks`` blocks, 60% walls, 20%
    lava, 20% moss, redrawn until solvable), kept as ``dr_generator=filtered``."""
    while True:
        n_blocks = blocks if filtered else int(rng.integers(0, blocks))
        grid = np.zeros((size, size), dtype=np.uint8)
        cells = rng.choice(size * size, size=n_blocks + 2, replace=False)
        shares = [0.6, 0.2, 0.2] if filtered else [1 / 3, 1 / 3, 1 / 3]
        grid.flat[cells[:n_blocks]] = rng.choice([WALL, LAVA, MOSS], size=n_blocks, p=shares)
        start, goal = divmod(int(cells[-2]), size), divmod(int(cells[-1]), size)
        level = Level(grid, start, goal, "random_blocks")
        if not filtered or is_solvable(level):
            return level


class DRSampler(UniformSampler):
    """Domain randomization: a fresh random-blocks level for every episode."""

    def __init__(self, size: int, blocks: int, seed: int = 0, filtered: bool = False):
        self.rng = np.random.default_rng(seed)
        self.size, self.blocks, self.filtered = size, blocks, filtered
        self.levels: list[Level] = []

    def sample(self, n: int) -> list[int]:
        self.levels = [random_blocks_level(self.rng, self.size, self.blocks, self.__dict__.get("filtered", False))
                       for _ in range(n)]
        return list(range(n))


def require_solvable(levels: list[Level], source: str | Path) -> list[Level]:
    """An evaluation set must be solvable level by level: an unsolvable level scores 0 for every
    policy and only lowers the solved rate (one line naming how many and the first)."""
    unsolvable = [i for i, level in enumerate(levels) if not is_solvable(level)]
    if unsolvable:
        raise RLError(f"{source}: {len(unsolvable)} of {len(levels)} evaluation levels cannot be solved (first: level "
                      f"{unsolvable[0]}); remove them or rebuild the set.")
    return levels


def stratified(levels: list[Level], limit: int) -> list[Level]:
    """``limit`` levels with the same number from every structure (the first ones of each, in the
    set's order), or all levels when ``limit`` is 0. Level sets are stored in structure order, so
    the first N levels would be one or a few structures only."""
    if not limit or limit >= len(levels):
        return list(levels)
    by_structure: dict[str, list[Level]] = {}
    for level in levels:
        by_structure.setdefault(level.structure, []).append(level)
    per = max(1, limit // len(by_structure))
    return [level for group in by_structure.values() for level in group[:per]]


def play(policy: ActorCritic, env_list: list[CaveEscapeEnv], levels: list[Level], generator: torch.Generator,
         greedy: bool = False, episodes: int = 1) -> np.ndarray:
    """``episodes`` episodes per level (in batches of len(env_list)); returns (levels, episodes)
    returns. Every draw (reset seeds, sampled actions) comes from ``generator``, so one seed gives
    one result."""
    queue = [level for level in levels for _ in range(episodes)]
    returns = []
    for start in range(0, len(queue), len(env_list)):
        batch = queue[start : start + len(env_list)]
        observations = [env.reset(seed=int(torch.randint(2**31 - 1, (1,), generator=generator)),
                                  options={"level": level})[0] for env, level in zip(env_list, batch)]
        total, active = np.zeros(len(batch)), np.ones(len(batch), dtype=bool)
        memory = policy.initial_memory(len(batch))
        while active.any():
            with torch.no_grad():
                logits, _, memory = policy(*encode_observations(observations), memory)
            actions = (logits.argmax(-1) if greedy else
                       torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)).tolist()
            for i in np.flatnonzero(active):
                observations[i], reward, terminated, truncated, _ = env_list[i].step(actions[i])
                total[i] += reward
                active[i] = not (terminated or truncated)
        returns.extend(total.tolist())
    return np.array(returns).reshape(len(levels), episodes)


def level_set_metrics(name: str, levels: list[Level], returns: np.ndarray) -> dict[str, float]:
    """Mean return and solved rate over levels (a level's solved rate: the share of its episodes
    that reached the goal), and the solved rate of each structure."""
    solved = (returns > 0).mean(1)
    metrics = {f"{name}/return": float(returns.mean()), f"{name}/solved_rate": float(solved.mean())}
    for structure in sorted({level.structure for level in levels}):
        mask = np.array([level.structure == structure for level in levels])
        metrics[f"{name}/solved_rate/{structure or 'unnamed'}"] = float(solved[mask].mean())
        metrics[f"{name}/return/{structure or 'unnamed'}"] = float(returns[mask].mean())
    return metrics


class UEDTraining:
    main_metric = "in_dist/solved_rate"
    higher_is_better = True

    def __init__(self, config: UEDConfig, policy: DevicePolicy, method: str = "dred"):
        if method not in METHODS:
            raise RLError(f"method {method!r} is not one of {', '.join(METHODS)}.")
        self.config = cfg = config
        self.method = method
        train_path = Path(cfg.levels) if cfg.levels else LEVEL_SETS / "train.npz"
        self.train_levels = load_levels(train_path)
        size = self.train_levels[0].grid.shape[0]
        self.eval_sets = self._eval_sets()
        self.envs = [CaveEscapeEnv(self.train_levels[0], size=size, max_steps=cfg.max_episode_steps)
                     for _ in range(cfg.num_envs)]
        self.net = ActorCritic(hidden=cfg.hidden, recurrent=cfg.recurrent)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        if method == "dr":
            if cfg.dr_generator not in ("official", "filtered"):
                raise RLError(f"dr_generator={cfg.dr_generator!r} is not one of official, filtered.")
            self.sampler = DRSampler(size, cfg.dr_blocks, cfg.seed, filtered=cfg.dr_generator == "filtered")
        elif method == "uniform":
            self.sampler = UniformSampler(self.train_levels, cfg.seed)
        elif method == "plr":
            self.sampler = PLRSampler(self.train_levels, PLRConfig(cfg.plr_temperature, cfg.staleness_coef,
                                                                   cfg.plr_unseen_until), cfg.seed)
        else:
            self.sampler = DREDBuffer(self.train_levels, DREDConfig(cfg.buffer_size, cfg.plr_temperature,
                                                                    cfg.secondary_temperature, cfg.staleness_coef),
                                      cfg.seed)
            from grp_workbench.rl.ued.level_vae import load_level_vae

            if cfg.vae_decode not in ("sample", "argmax"):
                raise RLError(f"vae_decode={cfg.vae_decode!r} is not one of sample (the official decoding), argmax.")
            if not cfg.vae_run:
                raise RLError("method=dred needs a trained level VAE: `workbench rl train level-vae --levels "
                              "train.npz`, then --set vae_run=<its run directory>.")
            self.vae = load_level_vae(cfg.vae_run)
            self.latents = self.vae.encode_levels(self.train_levels)
        self.steps_done = 0
        self._observations: list[dict] | None = None
        self._memory: Memory = None
        self._level_ids: list[int] = []

    def _eval_sets(self) -> dict[str, list[Level]]:
        spec = self.config.eval_levels or (f"in_dist={LEVEL_SETS / 'test.npz'},"
                                           f"held_out_structures={LEVEL_SETS / 'held_out.npz'}")
        sets = {}
        for item in spec.split(","):
            name, _, path = item.partition("=")
            sets[name] = require_solvable(stratified(load_levels(path), self.config.eval_limit), path)
        return sets

    def _start_episode(self, i: int) -> dict:
        level_id = self.sampler.sample(1)[0]
        self._level_ids[i] = level_id
        level = self.sampler.level(level_id)
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
        return self.envs[i].reset(seed=seed, options={"level": level})[0]

    def update(self) -> dict[str, float]:
        cfg = self.config
        self.sampler.set_progress(self.steps_done / cfg.total_steps)
        if self._observations is None:
            self._level_ids = [0] * cfg.num_envs
            self._observations = [self._start_episode(i) for i in range(cfg.num_envs)]
            self._memory = self.net.initial_memory(cfg.num_envs)
        # PLR's first pass over the training levels only scores them: no gradient step on its rollouts
        first_pass = isinstance(self.sampler, PLRSampler) and self.sampler.in_first_pass()
        rollout = self._collect()
        metrics = {"episode_return": rollout["episode_return"]} if first_pass else self._ppo(rollout)
        metrics["gradient_update"] = 0.0 if first_pass else 1.0
        if isinstance(self.sampler, PLRSampler):
            metrics["levels_seen_fraction"] = float(self.sampler.seen.mean())
        if self.method == "dred":
            metrics |= self._generate_and_score()
        self.steps_done += cfg.num_envs * cfg.num_steps
        return metrics | {"steps": cfg.num_envs * cfg.num_steps}

    def _collect(self) -> dict[str, Any]:
        cfg = self.config
        n, t_max = cfg.num_envs, cfg.num_steps
        images = torch.zeros(t_max, n, 3, 5, 5)
        directions = torch.zeros(t_max, n, dtype=torch.long)
        actions = torch.zeros(t_max, n, dtype=torch.long)
        log_probs, values, rewards, dones = (torch.zeros(t_max, n) for _ in range(4))
        level_of_step = np.zeros((t_max, n), dtype=np.int64)
        episode_returns, finished_returns, running = [], [], np.zeros(n)
        initial_memory = self._memory
        for t in range(t_max):
            image, direction = encode_observations(self._observations)
            with torch.no_grad():
                logits, value, self._memory = self.net(image, direction, self._memory)
            dist = torch.distributions.Categorical(logits=logits)
            action = dist.sample()
            images[t], directions[t], actions[t] = image, direction, action
            log_probs[t], values[t] = dist.log_prob(action), value
            level_of_step[t] = self._level_ids
            for i, env in enumerate(self.envs):
                obs, reward, terminated, truncated, _ = env.step(int(action[i]))
                rewards[t, i] = reward
                running[i] += reward
                if terminated or truncated:
                    dones[t, i] = 1.0  # a time limit counts as an end here too (no bootstrap)
                    finished_returns.append((self._level_ids[i], running[i]))
                    episode_returns.append(running[i])
                    running[i] = 0.0
                    obs = self._start_episode(i)
                self._observations[i] = obs
            self._memory = forget_ended(self._memory, dones[t])
        with torch.no_grad():
            _, last_value, _ = self.net(*encode_observations(self._observations), self._memory)
        advantages = compute_gae(rewards, values, dones, last_value, cfg.gamma, cfg.gae_lambda)
        score_levels(self.sampler, level_of_step, advantages, finished_returns)
        return {"images": images, "directions": directions, "actions": actions, "log_probs": log_probs,
                "values": values, "advantages": advantages, "returns": advantages + values, "dones": dones,
                "initial_memory": initial_memory,
                "episode_return": float(np.mean(episode_returns)) if episode_returns else 0.0,
                "episodes": len(episode_returns)}


    def _ppo(self, rollout: dict[str, Any]) -> dict[str, float]:
        """PPO epochs; the feed-forward core shuffles single steps, the recurrent one whole
        environment sequences (so that each replays from its stored memory)."""
        cfg = self.config
        keys = ("images", "directions", "actions", "log_probs", "values", "advantages", "returns")
        stats = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0}
        count = 0
        for _ in range(cfg.ppo_epochs):
            if cfg.recurrent:
                minibatches = [(envs_, None) for envs_ in torch.randperm(cfg.num_envs, generator=self.generator)
                               .chunk(cfg.num_minibatches)]
            else:
                size = cfg.num_envs * cfg.num_steps
                minibatches = [(None, batch) for batch in torch.randperm(size, generator=self.generator)
                               .chunk(cfg.num_minibatches)]
            for envs_, batch in minibatches:
                if envs_ is not None:
                    memory = tuple(m[envs_] for m in rollout["initial_memory"])
                    logits, value = self.net.unroll(rollout["images"][:, envs_], rollout["directions"][:, envs_],
                                                    memory, rollout["dones"][:, envs_])
                    logits, value = logits.flatten(0, 1), value.flatten(0, 1)
                    data = {k: rollout[k][:, envs_].flatten(0, 1) for k in keys}
                else:
                    data = {k: rollout[k].flatten(0, 1)[batch] for k in keys}
                    logits, value, _ = self.net(data["images"], data["directions"])
                for name, number in ppo_step(self.optimizer, self.net.parameters(), logits, value, data, cfg).items():
                    stats[name] += number
                count += 1
        return {k: v / count for k, v in stats.items()} | {"episode_return": rollout["episode_return"]}

    def _generate_and_score(self) -> dict[str, float]:
        """DRED: decode SLERP interpolations between pairs of training levels, score them with one
        rollout each (no gradient update), and offer them to the buffer."""
        cfg = self.config
        levels, parents = self.vae.interpolate(self.latents, self.train_levels, cfg.num_pairs, cfg.interpolations,
                                               self.generator, sample=cfg.vae_decode == "sample")
        returns, scores = self._evaluate_for_scores(levels)
        for level, parent, ret, score in zip(levels, parents, returns, scores):
            self.sampler.add_generated(level, score, ret, parent)
        counts = self.sampler.take_counts()
        # buffer statistics per update: what was proposed and admitted, how much of it can be solved at
        # all, and how much of the replay distribution still goes to the training levels
        return {"generated_proposed": float(counts["proposed"]), "generated_kept": float(counts["admitted"]),
                "generated_unsolved": float(counts["unsolved"]), "generated_duplicate": float(counts["duplicate"]),
                "generated_solved": float(np.mean(np.array(returns) > 0)),
                "generated_solvable": float(np.mean([is_solvable(level) for level in levels])),
                "buffer_generated": float(self.sampler.n_generated()),
                "replay_dataset_mass": self.sampler.dataset_mass()}

    def _evaluate_for_scores(self, levels: list[Level]) -> tuple[list[float], list[float]]:
        """Score generated levels as the official runner does: one rollout of ``num_steps`` steps on
        each level at once (an environment per level, reset to the same level whenever an episode
        ends), no gradient update; a level's score is the mean |GAE(λ) advantage| over its rollout,
        bootstrapped from the last value, and its return the best finished episode (0 if none)."""
        cfg = self.config
        scoring_envs = [CaveEscapeEnv(level, size=level.grid.shape[0], max_steps=cfg.max_episode_steps)
                        for level in levels]

        def reset(i: int) -> dict:
            return scoring_envs[i].reset(seed=int(torch.randint(2**31 - 1, (1,), generator=self.generator)),
                                 options={"level": levels[i]})[0]

        observations = [reset(i) for i in range(len(levels))]
        memory = self.net.initial_memory(len(levels))
        rewards, values, dones = (torch.zeros(cfg.num_steps, len(levels)) for _ in range(3))
        running, best = np.zeros(len(levels)), np.full(len(levels), -np.inf)
        for t in range(cfg.num_steps):
            with torch.no_grad():
                logits, value, memory = self.net(*encode_observations(observations), memory)
            actions = torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator).squeeze(-1)
            values[t] = value
            for i, env in enumerate(scoring_envs):
                observations[i], reward, terminated, truncated, _ = env.step(int(actions[i]))
                rewards[t, i] = reward
                running[i] += reward
                if terminated or truncated:
                    dones[t, i] = 1.0
                    best[i] = max(best[i], running[i])
                    running[i] = 0.0
                    observations[i] = reset(i)
            memory = forget_ended(memory, dones[t])
        with torch.no_grad():
            _, last_value, _ = self.net(*encode_observations(observations), memory)
        advantages = compute_gae(rewards, values, dones, last_value, cfg.gamma, cfg.gae_lambda)
        scores = advantages.abs().mean(0).tolist()
        returns = np.where(np.isfinite(best), best, 0.0).tolist()
        return returns, scores

    def evaluate(self) -> dict[str, float]:
        metrics = {}
        cfg = self.config
        # its own stream, seeded from the run's seed and progress: an evaluation neither depends on nor
        # changes the training draws, and the same checkpoint always evaluates the same
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.steps_done)
        for name, levels in self.eval_sets.items():
            returns = play(self.net, self.envs, levels, generator, greedy=cfg.eval_greedy,
                           episodes=1 if cfg.eval_greedy else cfg.eval_episodes)
            metrics |= level_set_metrics(name, levels, returns)
        self._observations = None  # evaluation reset the training environments: start fresh training episodes
        return metrics

    def state_dict(self) -> dict[str, Any]:
        state = {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "generator": self.generator.get_state(), "steps_done": self.steps_done,
                 "sampler": self.sampler.__dict__.copy()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.steps_done = state["steps_done"]
        self.sampler.__dict__.update(state["sampler"])
        self._observations = None  # episodes restart from fresh levels after a resume


def _task(config: UEDConfig) -> str:
    return "cave_escape"


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"num_envs": 36, "total_steps": 265_000_000, "eval_every": 5_000_000, "checkpoint_every": 5_000_000},
    # a CPU budget: 1M environment steps, evaluation on 64 levels of each set
    "quick": {"total_steps": 1_000_000, "eval_every": 250_000, "checkpoint_every": 250_000, "eval_limit": 64},
    "tiny": {"num_envs": 4, "num_steps": 32, "total_steps": 256, "eval_every": 256, "checkpoint_every": 256,
             "log_every": 128, "eval_limit": 4, "ppo_epochs": 1},
}
def _inputs(config: UEDConfig, method: str) -> dict[str, Any]:
    """The files a student run reads: its training levels and, for DRED, the level VAE's checkpoint."""
    inputs: dict[str, Any] = {"training levels": Path(config.levels) if config.levels else LEVEL_SETS / "train.npz"}
    if method == "dred" and config.vae_run:
        latest = RunDir(config.vae_run).latest_checkpoint()
        if latest is not None:
            inputs["level VAE"] = latest
    return inputs


# DRED quick, 2026-11-30: 876 environment steps/s and 3.7 s per evaluation over its first 24,576 steps
QUICK_COST = {"quick": "about 20 min on 2 CPU cores"}
SPECS = {method: MethodSpec(name=method, config_cls=UEDConfig, presets=PRESETS,
                            build=functools.partial(UEDTraining, method=method), task=_task,
                            inputs=functools.partial(_inputs, method=method),
                            preset_costs=QUICK_COST if method == "dred" else {}) for method in METHODS}
