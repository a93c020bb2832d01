"""Fake-user data poisoning that promotes target items, as ARLib (CoderWZW/ARLib) builds its profiles.

Targets (ARLib ``util/tool.py::targetItemSelect``): ``target_mode="unpopular"`` draws them uniformly
from the 20% least popular items, ``"popular"`` from the 10% most popular. Fake users: a fraction
of the real users (default 1%, about 300 on Gowalla as in the VAT poisoning files; rounded, at
least one, where ARLib truncates). Every fake profile holds every target. The filler size N is
the real users' mean training-profile length (ARLib's ``maliciousFeedbackSize = 0``:
``int(interactions / users)``) unless ``filler_size`` sets it.

* ``random`` (ARLib ``attack/Black/RandomAttack.py``): targets + N fillers uniform over non-targets.
* ``bandwagon`` (ARLib ``attack/Black/BandwagonAttack.py``): targets + the N most popular items (the
  same for every fake) + N//2 fillers uniform over the rest (Burke et al. 2005).
* ``dl``: the optimization-based attack of Huang et al. (NDSS 2021, "Data Poisoning Attacks to Deep
  Learning Based Recommender Systems"; the VAT paper's "DP"/"DL" attack, ARLib's
  ``attack/White/DLAttack.py``). Fake users are made a few at a time. Each round injects them
  holding only the targets, trains a surrogate MF with BPR plus a promotion loss that pushes every
  target above the K-th item of each real user's current top-K list, then gives each new fake user
  the N fillers the surrogate scores highest for it, with a selection weight that decays by
  ``delta`` (ARLib's sigma 0.8) each time an item is chosen so that fake users do not all pick the
  same items (reset once every weight is below 1).

Where ``dl`` departs from ARLib's ``DLAttack.py``, and why:

* Surrogate: an MF trained here, for either victim (a gray-box transfer attack); ARLib trains a
  copy of the victim itself (white-box). One surrogate keeps the crafted fakes identical across
  victims and defenses, so the benchmark compares defenses on the same poison.
* Promotion loss: a hinge ``max(s_K − s_t, −κ)`` over real users who do not hold the target
  (Huang et al.'s eq.); ARLib uses the unclipped ``s_K − s_t`` averaged over the batch's users, and
  computes it from embeddings taken under ``torch.no_grad()``, so in ARLib that term passes no
  gradient and only BPR trains the copy. Ours passes gradient, as the paper intends.
* Schedule: one pre-training of the surrogate, then ``epochs_per_round`` epochs per injected
  round (lr 1e-2 Adam); ARLib retrains ``innerEpoch`` + ``outerEpoch`` epochs from the victim's
  weights for every fake user (lr/10 then lr), which is a full model training per fake user and
  out of a CPU budget.
* Targets are forced into every profile (the paper's fake users rate the targets); ARLib replaces
  the fake user's row by the top-N scored items, which may drop them.

Fake users enter the training data only; their ids follow the real users'.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from grp_workbench.harness.data import cache_dir
from grp_workbench.harness.runs import atomic_write_bytes
from grp_workbench.recsys import RecsysError
from grp_workbench.recsys.data import BPRSampler, InteractionData, to_csr
from grp_workbench.recsys.metrics import mask_seen
from grp_workbench.recsys.models import MF, bpr_loss

ATTACKS = ("none", "random", "bandwagon", "dl")
TARGET_MODES = ("unpopular", "popular")
# ARLib util/tool.py::targetItemSelect: 'unpopular' = the 20% least popular, 'popular' = the top 10%
TARGET_POOL_FRACTION = {"unpopular": 0.2, "popular": 0.1}


@dataclass
class SurrogateAttackConfig:
    """The DL attack's surrogate and schedule (Huang et al. 2021; values follow ARLib's DLAttack where
    the paper leaves them open)."""

    pretrain_epochs: int = 20  # surrogate MF on the clean data before any fake user
    epochs_per_round: int = 1  # surrogate training with the promotion loss after each injection
    users_per_round: int = 1  # fake users injected per round (1 = the paper's one at a time)
    top_k: int = 10  # promotion loss target: the K-th item of each user's top-K list
    promotion_weight: float = 1.0  # eta, weight of the promotion loss beside BPR
    kappa: float = 0.0  # hinge floor: stop pushing once a target is kappa above the K-th item
    delta: float = 0.8  # selection-weight decay of a chosen filler (ARLib's sigma)
    dim: int = 64
    lr: float = 1e-2
    batch_size: int = 2048
    l2_reg: float = 1e-4


@dataclass
class Poisoning:
    attack: str
    targets: np.ndarray  # item ids
    n_real_users: int
    fake_profiles: list[np.ndarray]


def choose_targets(popularity: np.ndarray, n_targets: int, rng: np.random.Generator,
                   mode: str = "unpopular") -> np.ndarray:
    """``n_targets`` items drawn uniformly from the least (``unpopular``) or most (``popular``) popular pool."""
    if mode not in TARGET_MODES:
        raise RecsysError(f"target_mode={mode!r} is not one of {', '.join(TARGET_MODES)}.")
    if not 1 <= n_targets <= len(popularity):
        raise RecsysError(f"n_targets={n_targets} must lie in [1, {len(popularity)}] (the number of items).")
    order = np.argsort(popularity if mode == "unpopular" else -popularity, kind="stable")
    pool = order[: max(int(len(popularity) * TARGET_POOL_FRACTION[mode]), n_targets)]
    return np.sort(rng.choice(pool, size=n_targets, replace=False))


def filler_count(data: InteractionData, filler_size: int = 0) -> int:
    """N, the fillers per fake profile: ``filler_size`` if set, else the real users' mean
    training-profile length (ARLib's default ``maliciousFeedbackSize = 0``)."""
    if filler_size < 0:
        raise RecsysError(f"filler_size={filler_size} must be >= 0 (0 = the real users' mean profile length).")
    return filler_size or max(int(data.n_train / max(data.n_users, 1)), 1)


def _fill(candidates: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(candidates, size=min(size, len(candidates)), replace=False)


def make_fake_profiles(data: InteractionData, attack: str, targets: np.ndarray, n_fake: int,
                       rng: np.random.Generator, surrogate: SurrogateAttackConfig | None = None,
                       quiet: bool = True, filler_size: int = 0) -> list[np.ndarray]:
    n_filler = filler_count(data, filler_size)
    if attack == "dl":
        return cached_dl_profiles(data, targets, np.full(n_fake, n_filler + len(targets)), rng,
                                  surrogate or SurrogateAttackConfig(), quiet)
    non_targets = np.setdiff1d(np.arange(data.n_items), targets)
    if attack == "bandwagon":
        by_popularity = np.argsort(-data.item_popularity(), kind="stable")
        popular = by_popularity[~np.isin(by_popularity, targets)][:n_filler]
        others = np.setdiff1d(non_targets, popular)
    elif attack != "random":
        raise RecsysError(f"attack={attack!r} is not one of {', '.join(ATTACKS)}.")
    profiles = []
    for _ in range(n_fake):
        if attack == "random":
            filler = _fill(non_targets, n_filler, rng)
        else:
            filler = np.concatenate([popular, _fill(others, n_filler // 2, rng)])
        profiles.append(np.sort(np.concatenate([targets, filler])))
    return profiles


def poison(data: InteractionData, attack: str, fake_user_fraction: float = 0.01, n_targets: int = 5,
           seed: int = 0, surrogate: SurrogateAttackConfig | None = None, quiet: bool = True,
           target_mode: str = "unpopular", filler_size: int = 0) -> tuple[InteractionData, Poisoning]:
    """Return the data with fake users appended to the training matrix, and what was injected.

    Targets are chosen for every attack (including ``none``) from the same seed, so attacked and
    clean runs report T-HR on the same items.
    """
    if attack not in ATTACKS:
        raise RecsysError(f"attack={attack!r} is not one of {', '.join(ATTACKS)}.")
    if not 0 <= fake_user_fraction < 1:
        raise RecsysError(f"fake_user_fraction={fake_user_fraction} must lie in [0, 1).")
    rng = np.random.default_rng(seed)
    targets = choose_targets(data.item_popularity(), n_targets, rng, target_mode)
    if attack == "none" or fake_user_fraction == 0:
        return data, Poisoning(attack, targets, data.n_users, [])
    n_fake = max(int(round(fake_user_fraction * data.n_users)), 1)
    profiles = make_fake_profiles(data, attack, targets, n_fake, rng, surrogate, quiet, filler_size)
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


# ---- DL attack (Huang et al. 2021) ------------------------------------------------------------------
def _surrogate_epoch(model: MF, optimizer: torch.optim.Optimizer, sampler: BPRSampler, n_samples: int,
                     cfg: SurrogateAttackConfig, promotion=None) -> None:
    users, pos, neg = (torch.from_numpy(a) for a in sampler.sample(n_samples))
    for start in range(0, n_samples, cfg.batch_size):
        batch = slice(start, start + cfg.batch_size)
        u, i, j, reg = model(users[batch], pos[batch], neg[batch])
        loss = bpr_loss((u * i).sum(1), (u * j).sum(1)).mean() + cfg.l2_reg * reg
        if promotion is not None:
            loss = loss + cfg.promotion_weight * promotion(users[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def _kth_items(model: MF, train: sp.csr_matrix, users: np.ndarray, k: int, batch_size: int = 1024) -> torch.Tensor:
    """The item at rank k of each user's current top-k list (training items excluded)."""
    user_emb, item_emb = model.all_embeddings()
    out = torch.empty(len(users), dtype=torch.long)
    for start in range(0, len(users), batch_size):
        rows = users[start : start + batch_size]
        scores = user_emb[torch.from_numpy(rows)] @ item_emb.T
        mask_seen(scores, train, rows)
        out[start : start + len(rows)] = scores.topk(k, dim=1).indices[:, -1]
    return out


def _promotion_loss(model: MF, batch_users: torch.Tensor, n_real: int, targets: torch.Tensor,
                    kth_items: torch.Tensor, promotable: torch.Tensor, kappa: float) -> torch.Tensor:
    """Huang et al.'s l_u = max(s_u,K-th − s_u,t, −κ), mean over the batch's real users and their unheld targets."""
    real = torch.unique(batch_users[batch_users < n_real])
    user_emb, item_emb = model.user_embedding(real), model.item_embedding.weight
    target_scores = user_emb @ item_emb[targets].T  # (users, targets)
    kth_scores = (user_emb * item_emb[kth_items[real]]).sum(1, keepdim=True)
    hinge = torch.clamp(kth_scores - target_scores, min=-kappa)
    mask = promotable[real]
    return (hinge * mask).sum() / mask.sum().clamp(min=1)


def dl_attack_profiles(data: InteractionData, targets: np.ndarray, lengths: np.ndarray, rng: np.random.Generator,
                       cfg: SurrogateAttackConfig, quiet: bool = True) -> list[np.ndarray]:
    """Fake profiles (targets + fillers) of the given lengths, crafted against a surrogate MF."""
    n_real, n_items, n_fake = data.n_users, data.n_items, len(lengths)
    targets_t = torch.from_numpy(targets).long()
    # real users who do not already hold a target are the ones the promotion loss works on
    holds_target = np.zeros((n_real, len(targets)), dtype=bool)
    for column, item in enumerate(targets):
        holds_target[data.train[:, item].nonzero()[0], column] = True
    promotable = torch.from_numpy(~holds_target)
    real_users = np.arange(n_real)
    profiles: list[np.ndarray] = [targets.copy() for _ in range(n_fake)]
    weights = np.ones(n_items)
    non_target = np.ones(n_items, dtype=bool)
    non_target[targets] = False

    def training_matrix(n_injected: int) -> sp.csr_matrix:
        rows = np.repeat(np.arange(n_injected), [len(p) for p in profiles[:n_injected]])
        cols = np.concatenate(profiles[:n_injected]) if n_injected else np.zeros(0, dtype=np.int64)
        fake = to_csr(rows, cols, n_fake, n_items)
        return sp.vstack([data.train, fake]).tocsr()

    with torch.random.fork_rng():
        torch.manual_seed(int(rng.integers(2**31)))
        model = MF(n_real + n_fake, n_items, cfg.dim)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
        sampler = BPRSampler(training_matrix(0), rng)
        for _ in range(cfg.pretrain_epochs):
            _surrogate_epoch(model, optimizer, sampler, data.n_train, cfg)

        rounds = range(0, n_fake, cfg.users_per_round)
        for first in tqdm(rounds, desc="dl attack", unit="round", disable=quiet or None):
            new = range(first, min(first + cfg.users_per_round, n_fake))
            train = training_matrix(new.stop)  # the new fake users hold only the targets so far
            sampler = BPRSampler(train, rng)
            kth = _kth_items(model, train, real_users, cfg.top_k)

            promotion = functools.partial(_promotion_loss, model, n_real=n_real, targets=targets_t, kth_items=kth,
                                          promotable=promotable, kappa=cfg.kappa)
            for _ in range(cfg.epochs_per_round):
                _surrogate_epoch(model, optimizer, sampler, train.nnz, cfg, promotion)
            with torch.no_grad():
                fake_emb = model.user_embedding.weight[n_real + new.start : n_real + new.stop]
                scores = fake_emb @ model.item_embedding.weight.T
            for row, fake_user in enumerate(new):
                n_filler = int(lengths[fake_user]) - len(targets)
                # the paper ranks predicted probabilities times the selection weights; ties broken at random
                ranked = torch.sigmoid(scores[row]).numpy() * weights + 1e-12 * rng.random(n_items)
                ranked[~non_target] = -np.inf
                fillers = np.argpartition(-ranked, n_filler)[:n_filler] if n_filler > 0 else np.zeros(0, np.int64)
                profiles[fake_user] = np.sort(np.concatenate([targets, fillers]))
                weights[fillers] *= cfg.delta
                if weights.max() < 1:
                    weights[:] = 1.0
    return profiles


DL_PROFILES_VERSION = 1  # part of the cache key: bump when dl_attack_profiles makes other fakes from the same inputs


def cached_dl_profiles(data: InteractionData, targets: np.ndarray, lengths: np.ndarray, rng: np.random.Generator,
                       cfg: SurrogateAttackConfig, quiet: bool = True) -> list[np.ndarray]:
    """``dl_attack_profiles``, computed once per (training data, targets, lengths, config, rng state) and
    kept under the project cache: every seed and defense of a benchmark then trains on the same fakes."""
    key = hashlib.sha256()
    for array in (data.train.indptr, data.train.indices, targets, lengths):
        key.update(np.ascontiguousarray(array).tobytes())
    key.update(json.dumps([asdict(cfg), rng.bit_generator.state, DL_PROFILES_VERSION], sort_keys=True,
                          default=str).encode())
    path = cache_dir("recsys", "dl_attack") / f"{key.hexdigest()[:24]}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return np.split(stored["items"], np.cumsum(stored["lengths"])[:-1])
    profiles = dl_attack_profiles(data, targets, lengths, rng, cfg, quiet)
    buffer = io.BytesIO()
    np.savez(buffer, items=np.concatenate(profiles), lengths=np.array([len(p) for p in profiles]))
    atomic_write_bytes(path, buffer.getvalue())
    return profiles
