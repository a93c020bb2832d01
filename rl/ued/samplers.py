"""Level samplers behind one interface: domain randomization, uniform, PLR and DRED.

A sampler hands out level ids (``sample``), hears back how the student did on each (``update``:
the level's score and the best return it reached) and, for DRED, takes generated levels
(``add_generated``). Facts from the official code (uoe-agents/dred, level_replay/level_sampler.py;
../shared/references/dred.md):

* PLR (Jiang et al. 2021): P = (1 - rho) * P_S + rho * P_C, P_S the rank transform
  h(S_i) = (1 / rank_i)^(1/T) of the scores (value_l1, T = 0.1), P_C staleness
  (c - C_i) / sum_j (c - C_j) over episode counts, rho = 0.3; new scores replace old (EWA alpha 1).
  The level-replay code's "proportionate" schedule: while fewer than a fraction ``rho`` of the
  levels have been seen, an unseen level is drawn uniformly instead (its Procgen default: rho 1.0,
  every level once before any replay; DRED's dataset runs set it so that replay starts at once).
* DRED: a buffer (4,000) holding the training levels, which are never evicted, and generated
  levels, the lowest-weight one evicted first. P = (1 - s) [(1 - c_t) P_primary + c_t P_secondary]
  + s P_staleness: P_primary ranks value_l1 over training levels only (T = 0.1); P_secondary ranks
  grounded_value_l1 over the whole buffer (T = 1.0), a score forced to 0 on levels never solved
  (best return <= 0); staleness covers training levels only (s = 0.3); c_t rises linearly from 0
  to 1 over training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from grp_workbench.envs.levels import Level, level_key
from grp_workbench.rl import RLError


def rank_weights(scores: np.ndarray, temperature: float) -> np.ndarray:
    """PLR's rank prioritization: (1/rank)^(1/T), normalized; rank 1 = highest score (ties: lower index)."""
    if len(scores) == 0:
        return np.zeros(0)
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    weights = (1.0 / ranks) ** (1.0 / temperature)
    return weights / weights.sum()


def staleness_weights(last_sampled: np.ndarray, episode: int) -> np.ndarray:
    stale = episode - np.asarray(last_sampled, dtype=float)
    total = stale.sum()
    return stale / total if total > 0 else np.full(len(stale), 1.0 / max(len(stale), 1))


class UniformSampler:
    """Uniform over a fixed set of levels (the training set; for DR, a large pool drawn from the generator)."""

    def __init__(self, levels: list[Level], seed: int = 0):
        if not levels:
            raise RLError("a level sampler needs at least one level.")
        self.levels = list(levels)
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> list[int]:
        return self.rng.integers(len(self.levels), size=n).tolist()

    def level(self, level_id: int) -> Level:
        return self.levels[level_id]

    def update(self, level_id: int, score: float, max_return: float) -> None:
        pass

    def set_progress(self, fraction: float) -> None:
        pass


@dataclass
class PLRConfig:
    temperature: float = 0.1
    staleness_coef: float = 0.3
    unseen_until: float = 0.0  # draw unseen levels first while the seen fraction is below this (PLR's rho)


class PLRSampler(UniformSampler):
    """Prioritized level replay over a fixed level set (the DRED paper's 'PLR (dataset)')."""

    def __init__(self, levels: list[Level], config: PLRConfig | None = None, seed: int = 0):
        super().__init__(levels, seed)
        self.config = config or PLRConfig()
        self.scores = np.zeros(len(self.levels))
        self.last_sampled = np.zeros(len(self.levels))
        self.seen = np.zeros(len(self.levels), dtype=bool)
        self.episode = 0

    def weights(self) -> np.ndarray:
        cfg = self.config
        if not self.seen.any():
            return np.full(len(self.levels), 1.0 / len(self.levels))
        score_part = rank_weights(np.where(self.seen, self.scores, -np.inf), cfg.temperature)
        score_part = np.where(self.seen, score_part, 0.0)
        score_part /= score_part.sum()
        # staleness over seen levels only (level_sampler.py): an unseen level is not "stale"
        stale = np.zeros(len(self.levels))
        stale[self.seen] = staleness_weights(self.last_sampled[self.seen], self.episode)
        return (1 - cfg.staleness_coef) * score_part + cfg.staleness_coef * stale

    def in_first_pass(self) -> bool:
        """Still playing unseen levels first (fewer than ``unseen_until`` of them seen)."""
        return bool((~self.seen).any()) and self.seen.mean() < self.config.unseen_until

    def sample(self, n: int) -> list[int]:
        ids = []
        for _ in range(n):
            unseen = np.flatnonzero(~self.seen)
            if self.in_first_pass():
                level_id = int(self.rng.choice(unseen))
            else:
                level_id = int(self.rng.choice(len(self.levels), p=self.weights()))
            self.episode += 1
            self.last_sampled[level_id] = self.episode
            ids.append(level_id)
        return ids

    def update(self, level_id: int, score: float, max_return: float) -> None:
        self.scores[level_id] = score
        self.seen[level_id] = True


@dataclass
class DREDConfig:
    buffer_size: int = 4000
    primary_temperature: float = 0.1
    secondary_temperature: float = 1.0
    staleness_coef: float = 0.3


@dataclass
class _Entry:
    level: Level
    from_dataset: bool
    score: float = 0.0
    max_return: float = -np.inf
    last_sampled: int = 0
    seen: bool = False
    parents: tuple[int, int] = field(default=(-1, -1))


class DREDBuffer:
    """DRED's level buffer: training levels fixed, generated levels scored and replaced by weight."""

    def __init__(self, dataset: list[Level], config: DREDConfig | None = None, seed: int = 0):
        self.config = config or DREDConfig()
        if not dataset:
            raise RLError("DRED needs the training levels (the dataset) to ground generation.")
        if len(dataset) > self.config.buffer_size:
            raise RLError(f"{len(dataset)} training levels do not fit a buffer of {self.config.buffer_size}.")
        self.entries = [_Entry(level, True) for level in dataset]
        self.rng = np.random.default_rng(seed)
        self.progress = 0.0  # c_t
        self.episode = 0
        self._keys = {level_key(level) for level in dataset}  # what the buffer holds, for de-duplication
        # generated levels offered since the last ``take_counts``: admitted, or turned away as never
        # solved (grounded score 0) or as a copy of a level the buffer holds
        self.counts = {"proposed": 0, "admitted": 0, "unsolved": 0, "duplicate": 0}

    def set_progress(self, fraction: float) -> None:
        self.progress = float(np.clip(fraction, 0.0, 1.0))

    def _arrays(self):
        dataset = np.array([e.from_dataset for e in self.entries])
        seen = np.array([e.seen for e in self.entries])
        scores = np.array([e.score for e in self.entries])
        grounded = np.array([e.score if e.max_return > 0 else 0.0 for e in self.entries])
        last = np.array([e.last_sampled for e in self.entries], dtype=float)
        return dataset, seen, scores, grounded, last

    def weights(self) -> np.ndarray:
        cfg = self.config
        dataset, seen, scores, grounded, last = self._arrays()
        n = len(self.entries)
        primary = np.zeros(n)
        if dataset.any():
            primary[dataset] = (rank_weights(np.where(seen[dataset], scores[dataset], -np.inf),
                                             cfg.primary_temperature) if seen[dataset].any()
                                else np.full(dataset.sum(), 1.0 / dataset.sum()))
        secondary_scores = np.where(seen, grounded, -np.inf)
        secondary = rank_weights(secondary_scores, cfg.secondary_temperature) if seen.any() else primary
        secondary = np.where(seen & (grounded > 0) | dataset, secondary, 0.0)  # never-solved generated: 0
        secondary = secondary / secondary.sum() if secondary.sum() > 0 else primary
        staleness = np.zeros(n)
        staleness[dataset] = staleness_weights(last[dataset], self.episode)
        mix = (1 - self.progress) * primary + self.progress * secondary
        weights = (1 - cfg.staleness_coef) * mix + cfg.staleness_coef * staleness
        return weights / weights.sum()

    def sample(self, n: int) -> list[int]:
        ids = self.rng.choice(len(self.entries), size=n, p=self.weights()).tolist()
        for level_id in ids:
            self.episode += 1
            self.entries[level_id].last_sampled = self.episode
        return ids

    def level(self, level_id: int) -> Level:
        return self.entries[level_id].level

    def update(self, level_id: int, score: float, max_return: float) -> None:
        entry = self.entries[level_id]
        entry.score, entry.seen = score, True
        entry.max_return = max(entry.max_return, max_return)

    def add_generated(self, level: Level, score: float, max_return: float,
                      parents: tuple[int, int] = (-1, -1)) -> int | None:
        """Insert a scored generated level, as the official level store does (dred ``level_sampler.py``):
        only with a grounded score above 0 (solved at least once and a positive score: a level never
        solved would never be sampled), never a copy of a level the buffer holds (training levels
        included), and when full only in place of the lowest-weight generated level it outweighs.
        Returns its id, or None when it was not kept."""
        keys = self.__dict__.setdefault("_keys", {level_key(e.level) for e in self.entries})
        counts = self.__dict__.setdefault("counts", {"proposed": 0, "admitted": 0, "unsolved": 0, "duplicate": 0})
        counts["proposed"] += 1
        new_grounded = score if max_return > 0 else 0.0
        if new_grounded <= 0:
            counts["unsolved"] += 1
            return None
        key = level_key(level)
        if key in keys:
            counts["duplicate"] += 1
            return None
        entry = _Entry(level, False, score, max_return, self.episode, True, parents)
        if len(self.entries) < self.config.buffer_size:
            self.entries.append(entry)
            index = len(self.entries) - 1
        else:
            generated = [i for i, e in enumerate(self.entries) if not e.from_dataset]
            if not generated:
                return None
            grounded = np.array([self.entries[i].score if self.entries[i].max_return > 0 else 0.0 for i in generated])
            index = generated[int(np.argmin(grounded))]
            if new_grounded <= grounded.min():
                return None
            keys.discard(level_key(self.entries[index].level))
            self.entries[index] = entry
        keys.add(key)
        counts["admitted"] += 1
        return index

    def take_counts(self) -> dict[str, int]:
        """The admission counts since the last call (then reset)."""
        counts = dict(self.__dict__.get("counts", {}))
        self.counts = {"proposed": 0, "admitted": 0, "unsolved": 0, "duplicate": 0}
        return counts

    def dataset_mass(self) -> float:
        """The probability the replay distribution gives the training levels."""
        return float(self.weights()[[e.from_dataset for e in self.entries]].sum())

    def n_generated(self) -> int:
        return sum(not e.from_dataset for e in self.entries)
