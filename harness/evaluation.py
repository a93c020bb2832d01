"""Reliable-evaluation statistics over seeds and tasks.

Definitions follow rliable (Agarwal et al., "Deep RL at the Edge of the Statistical Precipice",
NeurIPS 2021, github google-research/rliable), reimplemented with numpy/scipy because rliable pulls
in arch, statsmodels, pandas and seaborn; ``tests/test_evaluation.py`` checks these functions
against rliable itself. A score matrix has shape ``(runs, tasks)``; per-task seeds are rows.

* ``aggregate_mean``: mean over tasks of the per-task mean.
* ``aggregate_median``: median over tasks of the per-task mean (with one task it equals the mean).
* ``aggregate_iqm``: interquartile mean, the 25%-trimmed mean of all runs × tasks pooled.
* ``stratified_bootstrap_ci``: percentile 95% interval, resampling runs with replacement
  independently within each task.
* ``probability_of_improvement``: mean over tasks of P(X > Y) (Mann-Whitney U / (n·m), ties ½).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

from grp_workbench.harness.errors import HarnessError

Statistic = Callable[[np.ndarray], np.ndarray]


def _as_matrix(scores, name: str = "scores") -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise HarnessError(f"{name} must be a non-empty (runs, tasks) matrix, got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise HarnessError(f"{name} contains NaN or inf; drop failed runs explicitly before aggregating.")
    return array


# Each statistic takes (..., runs, tasks) and reduces the last two axes, so that it runs on a whole
# stack of bootstrap resamples at once.
def aggregate_mean(scores: np.ndarray) -> np.ndarray:
    return np.mean(np.mean(scores, axis=-2), axis=-1)


def aggregate_median(scores: np.ndarray) -> np.ndarray:
    return np.median(np.mean(scores, axis=-2), axis=-1)


def aggregate_iqm(scores: np.ndarray) -> np.ndarray:
    flat = scores.reshape(*scores.shape[:-2], -1)
    return stats.trim_mean(flat, proportiontocut=0.25, axis=-1)


STATISTICS: dict[str, Statistic] = {"mean": aggregate_mean, "median": aggregate_median, "iqm": aggregate_iqm}


def _stratified_resample(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, runs, tasks): for every task, runs drawn with replacement from that task's runs."""
    runs, tasks = scores.shape
    index = rng.integers(0, runs, size=(reps, runs, tasks))
    return np.take_along_axis(np.broadcast_to(scores, (reps, runs, tasks)), index, axis=1)


def stratified_bootstrap_ci(
    scores, statistic: Statistic = aggregate_iqm, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic``; a single run gives a zero-width interval."""
    matrix = _as_matrix(scores)
    rng = np.random.default_rng(seed)
    samples = statistic(_stratified_resample(matrix, reps, rng))
    alpha = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [alpha, 100 - alpha])
    return float(low), float(high)


def summarize(scores, reps: int = 2000, seed: int = 0) -> dict[str, float | int | list[float]]:
    """Point estimates and 95% CIs of mean, median and IQM for one (runs, tasks) score matrix."""
    matrix = _as_matrix(scores)
    out: dict[str, float | int | list[float]] = {"n": int(matrix.shape[0]), "tasks": int(matrix.shape[1])}
    for name, statistic in STATISTICS.items():
        out[name] = float(statistic(matrix))
        out[f"{name}_ci95"] = list(stratified_bootstrap_ci(matrix, statistic, reps=reps, seed=seed))
    out["std"] = float(np.std(matrix, ddof=1)) if matrix.size > 1 else 0.0
    return out


def _probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x (..., n, tasks), y (..., m, tasks) → P(X > Y) averaged over tasks, ties counting ½."""
    greater = (x[..., :, None, :] > y[..., None, :, :]).mean(axis=(-3, -2))
    ties = (x[..., :, None, :] == y[..., None, :, :]).mean(axis=(-3, -2))
    return np.mean(greater + 0.5 * ties, axis=-1)


def probability_of_improvement(
    scores_x, scores_y, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float | list[float]]:
    """P(X > Y) of method X over method Y and its stratified (independent) bootstrap interval."""
    x, y = _as_matrix(scores_x, "scores_x"), _as_matrix(scores_y, "scores_y")
    if x.shape[1] != y.shape[1]:
        raise HarnessError(f"scores_x has {x.shape[1]} tasks but scores_y has {y.shape[1]}; they must match.")
    rng = np.random.default_rng(seed)
    samples = _probability_of_improvement(_stratified_resample(x, reps, rng), _stratified_resample(y, reps, rng))
    alpha = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [alpha, 100 - alpha])
    return {"probability": float(_probability_of_improvement(x, y)), "ci95": [float(low), float(high)]}


def normalized_score(raw, random_score: float, expert_score: float):
    """D4RL convention: 0 = random policy, 100 = expert policy."""
    if expert_score == random_score:
        raise HarnessError("expert_score equals random_score; normalized scores are undefined.")
    return 100.0 * (np.asarray(raw, dtype=np.float64) - random_score) / (expert_score - random_score)


def mean_and_ci_over_seeds(curves: np.ndarray, reps: int = 1000, seed: int = 0) -> tuple[np.ndarray, ...]:
    """For learning curves (seeds, points): mean and a bootstrap 95% band at every point."""
    curves = np.asarray(curves, dtype=np.float64)
    mean = curves.mean(axis=0)
    if curves.shape[0] < 2:
        return mean, mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    index = rng.integers(0, curves.shape[0], size=(reps, curves.shape[0]))
    boot = curves[index].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    return mean, low, high


def iqm_ci(values) -> tuple[float, float, float]:
    """(IQM, lower, upper) of one list of per-seed values: the IQM and its 95% bootstrap CI."""
    stats = summarize(np.asarray(values, dtype=float).reshape(-1, 1))
    low, high = stats["iqm_ci95"]
    return float(stats["iqm"]), float(low), float(high)
