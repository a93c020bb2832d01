import numpy as np
import pytest

from envs.levels import EMPTY, Level
from rl.ued.samplers import DREDBuffer, DREDConfig, PLRConfig, PLRSampler, rank_weights, staleness_weights


def _level(tag: int) -> Level:
    grid = np.zeros((3, 3), dtype=np.uint8) + EMPTY
    return Level(grid, (0, 0), (2, 2), f"l{tag}")


def test_rank_weights_match_hand_computation():
    scores = np.array([0.5, 2.0, 1.0])  # ranks 3, 1, 2
    assert rank_weights(scores, 1.0) == pytest.approx([2 / 11, 6 / 11, 3 / 11])
    assert rank_weights(scores, 0.5) == pytest.approx([4 / 49, 36 / 49, 9 / 49])
    assert staleness_weights(np.array([1, 3, 4]), 5) == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_plr_mixes_rank_and_staleness():
    sampler = PLRSampler([_level(i) for i in range(3)], PLRConfig(temperature=1.0, staleness_coef=0.3), seed=0)
    for level_id, score in enumerate([0.5, 2.0, 1.0]):
        sampler.update(level_id, score, max_return=0.0)
    sampler.last_sampled[:] = [1, 3, 4]
    sampler.episode = 5
    expected = 0.7 * np.array([2 / 11, 6 / 11, 3 / 11]) + 0.3 * np.array([4 / 7, 2 / 7, 1 / 7])
    assert sampler.weights() == pytest.approx(expected)


def test_dred_buffer_never_evicts_training_levels_and_ignores_unsolved_generated_levels():
    dataset = [_level(i) for i in range(4)]
    buffer = DREDBuffer(dataset, DREDConfig(buffer_size=6), seed=0)
    rng = np.random.default_rng(0)
    for step in range(50):
        buffer.add_generated(_level(100 + step), score=float(rng.uniform(0, 1)), max_return=float(rng.uniform(-1, 1)))
    assert len(buffer.entries) == 6 and buffer.n_generated() == 2
    assert [buffer.level(i).structure for i in range(4)] == ["l0", "l1", "l2", "l3"]
    assert all(buffer.entries[i].from_dataset for i in range(4))
    unsolved = buffer.add_generated(_level(999), score=5.0, max_return=0.0)  # never solved: grounded score 0
    assert unsolved is None
    # at the end of training (c_t = 1) a never-solved generated level gets no secondary weight
    buffer.entries[5].max_return = -1.0
    buffer.set_progress(1.0)
    for i in range(6):
        buffer.update(i, score=0.5, max_return=1.0 if i != 5 else -1.0)
    assert buffer.weights()[5] == 0.0 and buffer.weights()[:5].sum() == pytest.approx(1.0)
    # at the start (c_t = 0) only training levels are replayed
    buffer.set_progress(0.0)
    assert buffer.weights()[4:].sum() == 0.0
