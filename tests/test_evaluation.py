import numpy as np
import pytest
from rliable import metrics as rliable_metrics

from grp_workbench.harness import evaluation as ev
from grp_workbench.harness.errors import HarnessError

SCORES = np.random.default_rng(7).normal(size=(6, 4))
OTHER = SCORES + np.random.default_rng(8).normal(0.8, 0.5, size=(6, 4))


@pytest.mark.parametrize("ours, theirs", [
    (ev.aggregate_mean, rliable_metrics.aggregate_mean),
    (ev.aggregate_median, rliable_metrics.aggregate_median),
    (ev.aggregate_iqm, rliable_metrics.aggregate_iqm),
])
def test_point_estimates_match_rliable(ours, theirs):
    assert ours(SCORES) == pytest.approx(theirs(SCORES), rel=1e-12)


def test_probability_of_improvement_matches_rliable():
    ours = ev.probability_of_improvement(OTHER, SCORES)
    assert ours["probability"] == pytest.approx(rliable_metrics.probability_of_improvement(OTHER, SCORES))
    assert ours["ci95"][0] <= ours["probability"] <= ours["ci95"][1]
    assert ev.probability_of_improvement(SCORES, SCORES)["probability"] == pytest.approx(0.5)
    assert ev.probability_of_improvement(SCORES + 100, SCORES)["probability"] == 1.0


def test_iqm_ignores_the_outer_quartiles():
    assert ev.aggregate_iqm(np.array([[0.0], [1.0], [2.0], [1000.0]])) == pytest.approx(1.5)


def test_bootstrap_ci_brackets_the_estimate_and_shrinks_with_more_seeds():
    rng = np.random.default_rng(0)
    few, many = rng.normal(size=(5, 1)), rng.normal(size=(200, 1))
    low, high = ev.stratified_bootstrap_ci(few)
    assert low <= ev.aggregate_iqm(few) <= high
    low_many, high_many = ev.stratified_bootstrap_ci(many)
    assert high_many - low_many < high - low
    assert ev.stratified_bootstrap_ci([[3.0]]) == (3.0, 3.0)


def test_bootstrap_resamples_within_tasks_only():
    scores = np.array([[0.0, 100.0], [0.0, 100.0], [0.0, 100.0]])  # tasks differ, runs do not
    assert ev.stratified_bootstrap_ci(scores, ev.aggregate_mean) == (50.0, 50.0)


def test_summary_and_bad_input():
    out = ev.summarize([1.0, 2.0, 3.0, 4.0])
    assert out["n"] == 4 and out["mean"] == 2.5 and out["iqm"] == pytest.approx(2.5)
    with pytest.raises(HarnessError, match="NaN"):
        ev.summarize([1.0, float("nan")])
    with pytest.raises(HarnessError, match="tasks"):
        ev.probability_of_improvement(np.ones((3, 2)), np.ones((3, 1)))


def test_normalized_score_uses_d4rl_convention():
    assert ev.normalized_score(3234.3, -20.272305, 3234.3) == pytest.approx(100.0)
    assert ev.normalized_score(-20.272305, -20.272305, 3234.3) == pytest.approx(0.0)
