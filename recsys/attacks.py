"""Fake-user data poisoning that promotes target items.

Targets are drawn uniformly from the 20% least popular items (ARLib's 'unpopular' choice); the
number of fake users is a fraction of the real users (default 1%, about 300 on Gowalla as in the
VAT poisoning files); each fake profile holds every target plus filler items, and its length is
drawn from the real users' training-profile lengths, so fakes look like real users by size.

* ``random``: fillers uniform over non-target items.
* ``bandwagon``: half the fillers from the 1% most popular items, half uniform (Burke et al. 2005).

Fake users enter the training data only; their ids follow the real users'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys import RecsysError
from recsys.data import InteractionData, to_csr

ATTACKS = ("none", "random", "bandwagon")


@dataclass
class Poisoning:
    attack: str
    targets: np.ndarray  # item ids
    n_real_users: int
    fake_profiles: list[np.ndarray]


def choose_targets(popularity: np.ndarray, n_targets: int, rng: np.random.Generator,
                   unpopular_fraction: float = 0.2) -> np.ndarray:
    pool = np.argsort(popularity, kind="stable")[: max(int(len(popularity) * unpopular_fraction), n_targets)]
    return np.sort(rng.choice(pool, size=n_targets, replace=False))


def _profile_lengths(data: InteractionData, n_fake: int, n_targets: int, rng: np.random.Generator) -> np.ndarray:
    real = np.diff(data.train.indptr)
    real = real[real > 0]
    return np.clip(rng.choice(real, size=n_fake), n_targets + 1, data.n_items)


def _fill(candidates: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(candidates, size=min(size, len(candidates)), replace=False)


def make_fake_profiles(data: InteractionData, attack: str, targets: np.ndarray, n_fake: int,
                       rng: np.random.Generator) -> list[np.ndarray]:
    non_targets = np.setdiff1d(np.arange(data.n_items), targets)
    popular = np.argsort(-data.item_popularity(), kind="stable")[: max(data.n_items // 100, 1)]
    popular = np.setdiff1d(popular, targets)
    profiles = []
    for length in _profile_lengths(data, n_fake, len(targets), rng):
        n_filler = int(length) - len(targets)
        if attack == "random":
            filler = _fill(non_targets, n_filler, rng)
        elif attack == "bandwagon":
            chosen = _fill(popular, n_filler // 2, rng)
            rest = np.setdiff1d(non_targets, chosen)
            filler = np.concatenate([chosen, _fill(rest, n_filler - len(chosen), rng)])
        else:
            raise RecsysError(f"attack={attack!r} is not one of {', '.join(ATTACKS)}.")
        profiles.append(np.sort(np.concatenate([targets, filler])))
    return profiles


def poison(data: InteractionData, attack: str, fake_user_fraction: float = 0.01, n_targets: int = 5,
           seed: int = 0) -> tuple[InteractionData, Poisoning]:
    """Return the data with fake users appended to the training matrix, and what was injected.

    Targets are chosen for every attack (including ``none``) from the same seed, so attacked and
    clean runs report T-HR on the same items.
    """
    if attack not in ATTACKS:
        raise RecsysError(f"attack={attack!r} is not one of {', '.join(ATTACKS)}.")
    if not 0 <= fake_user_fraction < 1:
        raise RecsysError(f"fake_user_fraction={fake_user_fraction} must lie in [0, 1).")
    rng = np.random.default_rng(seed)
    targets = choose_targets(data.item_popularity(), n_targets, rng)
    if attack == "none" or fake_user_fraction == 0:
        return data, Poisoning(attack, targets, data.n_users, [])
    n_fake = max(int(round(fake_user_fraction * data.n_users)), 1)
    profiles = make_fake_profiles(data, attack, targets, n_fake, rng)
    fake_users = np.repeat(np.arange(data.n_users, data.n_users + n_fake), [len(p) for p in profiles])
    fake = to_csr(fake_users - data.n_users, np.concatenate(profiles), n_fake, data.n_items)
    empty = sp.csr_matrix((n_fake, data.n_items), dtype=np.float32)
    poisoned = InteractionData(
        name=data.name, n_users=data.n_users + n_fake, n_items=data.n_items,
        train=sp.vstack([data.train, fake]).tocsr(),
        test=sp.vstack([data.test, empty]).tocsr(),
        valid=None if data.valid is None else sp.vstack([data.valid, empty]).tocsr(),
        report={**data.report, f"fake_users_{attack}": n_fake},
    )
    return poisoned, Poisoning(attack, targets, data.n_users, profiles)
