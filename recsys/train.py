"""BPR training of MF / LightGCN on (possibly poisoned) data, with no defense, APR or VAT.

One trainer step is one epoch: ``n_train`` BPR samples (user uniform over users with training
items, fake users included; a random positive; a uniform negative the user has not interacted
with), in batches, as in the VAT code. Evaluation ranks every item for every real user: Recall@K
and NDCG@K on the test split, and T-HR@K / T-NDCG@K of the target items.

Where we differ from the official VAT code, on purpose (see recsys/README.md):
* clean metrics are averaged over real users only (the official code includes fake users);
* the target-item evaluation works (the official one crashes on an attribute it never sets);
* the k-core filter converges on users and items (the official loop only filters items);
* LightGCN uses its own eps (a misspelled model name makes the official one always use 0.3).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grp_workbench.harness.config import TrainConfig
from grp_workbench.harness.data import find_dataset_dir
from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.trainer import MethodSpec
from grp_workbench.recsys import RecsysError
from grp_workbench.recsys.attacks import ATTACKS, TARGET_MODES, SurrogateAttackConfig, poison
from grp_workbench.recsys.data import (
    BPRSampler,
    InteractionData,
    kcore,
    read_lightgcn_dir,
    read_movielens,
    read_recbole_inter,
    split_per_user,
    split_validation,
    subsample_users,
)
from grp_workbench.recsys.defenses import adversarial_bpr, vulnerability_scale
from grp_workbench.recsys.metrics import ranking_metrics, target_item_metrics
from grp_workbench.recsys.models import MF, LightGCN, bpr_loss, normalized_adjacency

# VAT's meta_config.py: VAT's eps per (model, dataset). APR runs at the official default eps (0.3,
# meta_config.py's --eps default) on every dataset: the per-dataset table is VAT's tuning, not APR's.
OFFICIAL_EPS = {("mf", "gowalla"): 0.6, ("mf", "yelp2018"): 0.5, ("mf", "mind"): 0.4,
                ("lightgcn", "gowalla"): 0.3, ("lightgcn", "yelp2018"): 0.3, ("lightgcn", "mind"): 0.3}
DEFAULT_EPS = 0.3
COLLAPSE_EPOCHS = 3  # BPR loss at ln 2 for this many epochs in a row: every score is equal, the embeddings collapsed
DEFENSES = ("none", "apr", "vat")


@dataclass
class RecConfig(TrainConfig):
    model: str = "mf"  # mf | lightgcn
    dataset: str = ""  # name in task names and the eps table; empty: gowalla for lightgcn data, else the file's name
    data_dir: str | None = None  # explicit folder (lightgcn format) or file (movielens u.data, recbole .inter)
    data_format: str = "lightgcn"  # lightgcn | movielens | recbole
    kcore: int = 10  # k-core filter for movielens / recbole data (the VAT code's min_interaction)
    min_rating: float = 0.0  # movielens: ratings below this are dropped before the k-core filter
    test_fraction: float = 0.2  # movielens / recbole: last share of each user's interactions held out (VAT: 0.2)
    valid_fraction: float = 0.1  # validation share per user (VAT: 0.1; lightgcn data: carved from train); 0 = none
    early_stop_evals: int = 0  # > 0: stop after this many evaluations without a better validation Recall@20
    user_sample: int = 0  # > 0: train on a seeded sample of this many users (CPU budgets); 0: all users
    sample_seed: int = 0  # fixed across training seeds
    dim: int = 64  # embedding size
    n_layers: int = 3  # LightGCN propagation layers
    lr: float = 1e-3  # AdamW
    weight_decay: float = 0.01  # AdamW's own default, which the official code leaves on
    l2_reg: float = 1e-4  # weight of mean squared ego-embedding norms
    batch_size: int = 2048
    eps: float = 0.0  # perturbation radius rho; 0 = official: APR 0.3, VAT the (model, dataset) table, else 0.3
    adv_reg: float = 1.0  # weight of the adversarial BPR term
    begin_adv: int = 5  # first epoch (1-based) with the adversarial term
    user_lambda: float = 2.0  # VAT's lambda in g(L_u) = lambda * sigmoid(mean / L_u - 1)
    attack: str = "none"  # none | random | bandwagon | dl
    fake_user_fraction: float = 0.01  # fake users as a fraction of real users
    n_targets: int = 5  # target items
    target_mode: str = "unpopular"  # unpopular (from the 20% least popular) | popular (the top 10%), as ARLib
    filler_size: int = 0  # fillers per fake user; 0 = the real users' mean profile length (ARLib's default)
    attack_seed: int = 0  # targets and fake profiles; fixed across training seeds
    dl_pretrain_epochs: int = 20  # dl attack: surrogate MF epochs on clean data
    dl_users_per_round: int = 1  # dl attack: fake users crafted per surrogate round (paper: 1)
    dl_epochs_per_round: int = 1  # dl attack: surrogate epochs with the promotion loss per round
    eval_batch_size: int = 2048
    total_steps: int = 30  # epochs
    eval_every: int = 5
    log_every: int = 1
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [("model", self.model, ("mf", "lightgcn")), ("attack", self.attack, ATTACKS),
                  ("data_format", self.data_format, ("lightgcn", "movielens", "recbole")),
                  ("target_mode", self.target_mode, TARGET_MODES)]
        for name, value, allowed in checks:
            if value not in allowed:
                raise RecsysError(f"{name}={value!r} is not one of {', '.join(allowed)}.")
        if self.eps < 0 or self.batch_size <= 0 or self.dim <= 0:
            raise RecsysError(f"eps={self.eps} must be >= 0, batch_size={self.batch_size} and dim={self.dim} > 0.")
        if not 0 < self.test_fraction < 1 or not 0 <= self.valid_fraction < 1 - self.test_fraction:
            raise RecsysError(f"test_fraction={self.test_fraction} and valid_fraction={self.valid_fraction} must "
                              "satisfy 0 < test_fraction, 0 <= valid_fraction, test_fraction + valid_fraction < 1.")
        if not 0 <= self.fake_user_fraction < 1:
            raise RecsysError(f"fake_user_fraction={self.fake_user_fraction} must lie in [0, 1) (0.03 = 3%).")
        if self.filler_size < 0 or self.early_stop_evals < 0:
            raise RecsysError(f"filler_size={self.filler_size} and early_stop_evals={self.early_stop_evals} "
                              "must be >= 0.")

    @property
    def data_name(self) -> str:
        """``dataset`` if set, else the name the data itself gives (``dataset_name``)."""
        return self.dataset or dataset_name(self)

    def radius(self, defense: str) -> float:
        """The perturbation radius: ``eps`` if set, else APR's official default and VAT's table."""
        if self.eps:
            return self.eps
        return OFFICIAL_EPS.get((self.model, self.data_name), DEFAULT_EPS) if defense == "vat" else DEFAULT_EPS


def dataset_name(config: RecConfig) -> str:
    """The name runs and the eps table use: gowalla for lightgcn-format data without a folder, else
    the folder's name (lightgcn) or the file's (``ml-100k/u.data`` -> ``ml-100k``; ``x.inter`` -> ``x``)."""
    if not config.data_dir:
        return "gowalla" if config.data_format == "lightgcn" else "unnamed"
    path = Path(config.data_dir).resolve()
    if path.name == "u.data":
        return path.parent.name
    return path.stem if config.data_format != "lightgcn" else path.name


def load_data(config: RecConfig) -> InteractionData:
    """The dataset, user-sampled if asked, with a per-user validation split: VAT's chronological
    70/10/20 for interaction files; for the LightGCN split (train/test given) carved from train."""
    if config.data_format == "lightgcn":
        if config.data_dir and Path(config.data_dir).is_file():
            raise RecsysError(f"--data-dir {config.data_dir} is a file, and data_format=lightgcn reads a folder "
                              "(train.txt, test.txt). For a file add --set data_format=movielens (u.data) or "
                              "--set data_format=recbole (.inter).")
        folder = find_dataset_dir(config.data_name, config.data_dir)
        if folder is None:
            raise RecsysError(f"dataset {config.data_name!r} not found; pass --data-dir (a folder with train.txt and "
                              f"test.txt) or put it under $WORKBENCH_DATA/{config.data_name}.")
        data = read_lightgcn_dir(folder, name=config.data_name)
    else:
        if not config.data_dir:
            raise RecsysError(f"data_format={config.data_format} needs --data-dir pointing at the file.")
        if Path(config.data_dir).is_dir():
            raise RecsysError(f"--data-dir {config.data_dir} is a folder; data_format={config.data_format} reads "
                              "one file (MovieLens u.data, RecBole .inter). Point it at the file.")
        interactions = (read_movielens(config.data_dir, config.min_rating) if config.data_format == "movielens"
                        else read_recbole_inter(config.data_dir))
        data = split_per_user(kcore(interactions, config.kcore), config.test_fraction, config.valid_fraction,
                              seed=config.sample_seed, name=config.data_name)
    if config.user_sample:
        data = subsample_users(data, config.user_sample, config.sample_seed)
    if data.valid is None and config.valid_fraction > 0:
        data = split_validation(data, config.valid_fraction, config.sample_seed)
    return data


class RobustRecommender:
    """BPR (+ APR / VAT adversarial term) on MF or LightGCN; one ``update`` is one epoch.

    The best evaluation is chosen on validation Recall@20 (``valid_recall@20``), never on test; with
    ``valid_fraction=0`` there is no best, only the final evaluation."""

    higher_is_better = True

    def __init__(self, config: RecConfig, policy: DevicePolicy, defense: str = "none"):
        if defense not in DEFENSES:
            raise RecsysError(f"defense={defense!r} is not one of {', '.join(DEFENSES)}.")
        self.config, self.device, self.defense = config, policy.device, defense
        clean = load_data(config)
        surrogate = SurrogateAttackConfig(pretrain_epochs=config.dl_pretrain_epochs,
                                          users_per_round=config.dl_users_per_round,
                                          epochs_per_round=config.dl_epochs_per_round)
        self.data, self.poisoning = poison(clean, config.attack, config.fake_user_fraction, config.n_targets,
                                           seed=config.attack_seed, surrogate=surrogate, quiet=False,
                                           target_mode=config.target_mode, filler_size=config.filler_size)
        self.selects_best = self.data.valid is not None
        self.main_metric = "valid_recall@20" if self.selects_best else "recall@20"
        self.early_stop_evals = config.early_stop_evals if self.selects_best else 0
        self.radius = config.radius(defense)
        self.epochs_at_chance = 0
        self.real_users = np.arange(self.poisoning.n_real_users)
        train = self.data.train
        self.rng = np.random.default_rng(config.seed)
        self.sampler = BPRSampler(train, self.rng)
        # items masked when ranking: training items, and validation items when testing
        self.seen = train if self.data.valid is None else (train + self.data.valid).tocsr()
        if config.model == "mf":
            self.model = MF(self.data.n_users, self.data.n_items, config.dim)
        else:
            self.model = LightGCN(self.data.n_users, self.data.n_items, normalized_adjacency(train), config.dim,
                                  config.n_layers)
        self.model.to(self.device)
        # Dense AdamW over whole embedding tables, as the official code; the fused kernel is ~8x faster on a CPU.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                           fused=self.device.type in ("cpu", "cuda"))
        self.epoch = 0

    def update(self) -> dict[str, float]:
        self.epoch += 1
        cfg = self.config
        adversarial = self.defense != "none" and self.epoch >= cfg.begin_adv
        self.model.train()
        users, pos, neg = (torch.from_numpy(a).to(self.device) for a in self.sampler.sample(self.data.n_train))
        # summed on the device and read once per epoch: a .item() per batch would sync a GPU 400 times
        totals = dict.fromkeys(("loss", "bpr", "adv", "radius_scale_std"), torch.zeros((), device=self.device))
        n_batches = 0
        for start in range(0, len(users), cfg.batch_size):
            u_idx, i_idx, j_idx = (t[start : start + cfg.batch_size] for t in (users, pos, neg))
            u, i, j, reg = self.model(u_idx, i_idx, j_idx)
            per_sample = bpr_loss((u * i).sum(1), (u * j).sum(1))
            loss = per_sample.mean() + cfg.l2_reg * reg
            if adversarial:
                scale = vulnerability_scale(u_idx, per_sample, cfg.user_lambda) if self.defense == "vat" else None
                adv = adversarial_bpr(u, i, j, per_sample, self.radius, scale).mean()
                loss = loss + cfg.adv_reg * adv
                totals["adv"] = totals["adv"] + adv.detach()
                if scale is not None:
                    totals["radius_scale_std"] = totals["radius_scale_std"] + scale.std().detach()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            totals["loss"] = totals["loss"] + loss.detach()
            totals["bpr"] = totals["bpr"] + per_sample.mean().detach()
            n_batches += 1
        metrics = {k: v.item() / n_batches for k, v in totals.items()} | {"epoch": float(self.epoch)}
        self._warn_if_collapsed(metrics["bpr"])
        return metrics

    def _warn_if_collapsed(self, bpr: float) -> None:
        """A BPR loss stuck at ln 2 means every score is equal: the embeddings collapsed (seen with
        a too large eps); say so instead of training on."""
        self.epochs_at_chance = self.epochs_at_chance + 1 if abs(bpr - math.log(2)) < 1e-3 else 0
        if self.epochs_at_chance == COLLAPSE_EPOCHS:
            warnings.warn(f"epoch {self.epoch}: the BPR loss has been ln 2 = 0.6931 for {COLLAPSE_EPOCHS} epochs: "
                          f"the embeddings collapsed (every score equal). With a defense, lower eps "
                          f"(now {self.radius}); otherwise raise lr.", stacklevel=2)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        user_emb, item_emb = self.model.all_embeddings()
        bs = self.config.eval_batch_size
        metrics = ranking_metrics(user_emb, item_emb, self.seen, self.data.test, self.real_users, (10, 20), bs)
        if self.data.valid is not None:  # ranked with only the training items masked, as VAT's validation
            valid = ranking_metrics(user_emb, item_emb, self.data.train, self.data.valid, self.real_users, (20,), bs)
            metrics |= {f"valid_{k}": v for k, v in valid.items()}
        metrics |= target_item_metrics(user_emb, item_emb, self.seen, self.data.test, self.poisoning.targets,
                                       self.real_users, (10, 20, 50), bs)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": self.rng.bit_generator.state, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.epoch = state["epoch"]


def _task(config: RecConfig) -> str:
    """``<dataset>-<model>-<attack>-<fraction>pct`` (e.g. gowalla-u3000-mf-bandwagon-1pct): everything
    that changes the task; a clean run is ``<dataset>-<model>-none``, popular targets add ``-popular``,
    a set filler size ``-fillN``."""
    name = config.data_name + (f"-u{config.user_sample}" if config.user_sample else "")
    task = f"{name}-{config.model}-{config.attack}"
    if config.attack != "none" and config.fake_user_fraction > 0:
        task += f"-{100 * config.fake_user_fraction:g}pct"
    if config.target_mode != "unpopular":
        task += f"-{config.target_mode}"
    if config.filler_size and config.attack != "none":
        task += f"-fill{config.filler_size}"
    return task


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # About a minute on a CPU for MF: a 3,000-user sample of Gowalla. An epoch there is ~45 batches
    # instead of ~400, so epochs are scaled to keep the paper's update counts: the adversarial term
    # starts after ~1,800 updates (the paper: 5 full epochs, ~2,000) and training runs 3,600.
    "quick": {"user_sample": 3000, "total_steps": 80, "eval_every": 20, "begin_adv": 40},
    "tiny": {"user_sample": 300, "total_steps": 3, "eval_every": 3, "begin_adv": 2, "batch_size": 512},
}


def _spec(name: str, defense: str) -> MethodSpec:
    return MethodSpec(name=name, config_cls=RecConfig, presets=PRESETS,
                      build=functools.partial(RobustRecommender, defense=defense), task=_task)


# The method is the defense; the backbone and the attack are config fields (--set model=lightgcn attack=random).
SPECS = {spec.name: spec for spec in (_spec("bpr", "none"), _spec("apr", "apr"), _spec("vat", "vat"))}
