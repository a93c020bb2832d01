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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from grp_workbench.harness.config import TrainConfig
from grp_workbench.harness.data import find_dataset_dir
from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.trainer import MethodSpec
from grp_workbench.recsys import RecsysError
from grp_workbench.recsys.attacks import ATTACKS, SurrogateAttackConfig, poison
from grp_workbench.recsys.data import (
    BPRSampler,
    InteractionData,
    kcore,
    read_lightgcn_dir,
    read_movielens,
    read_recbole_inter,
    split_per_user,
    subsample_users,
)
from grp_workbench.recsys.defenses import adversarial_bpr, vulnerability_scale
from grp_workbench.recsys.metrics import ranking_metrics, target_item_metrics
from grp_workbench.recsys.models import MF, LightGCN, bpr_loss, normalized_adjacency

# VAT's meta_config.py: eps per (model, dataset); one --eps is shared by the APR and VAT trainers.
OFFICIAL_EPS = {("mf", "gowalla"): 0.6, ("mf", "yelp2018"): 0.5, ("mf", "mind"): 0.4,
                ("lightgcn", "gowalla"): 0.3, ("lightgcn", "yelp2018"): 0.3, ("lightgcn", "mind"): 0.3}
DEFAULT_EPS = 0.3
DEFENSES = ("none", "apr", "vat")


@dataclass
class RecConfig(TrainConfig):
    model: str = "mf"  # mf | lightgcn
    dataset: str = "gowalla"  # dataset name (folder under $WORKBENCH_DATA or ../shared/datasets)
    data_dir: str | None = None  # explicit folder (lightgcn format) or file (movielens u.data, recbole .inter)
    data_format: str = "lightgcn"  # lightgcn | movielens | recbole
    kcore: int = 10  # k-core filter for movielens / recbole data (the VAT code's min_interaction)
    user_sample: int = 0  # > 0: train on a seeded sample of this many users (CPU budgets); 0: all users
    sample_seed: int = 0  # fixed across training seeds
    dim: int = 64  # embedding size
    n_layers: int = 3  # LightGCN propagation layers
    lr: float = 1e-3  # AdamW
    weight_decay: float = 0.01  # AdamW's own default, which the official code leaves on
    l2_reg: float = 1e-4  # weight of mean squared ego-embedding norms
    batch_size: int = 2048
    eps: float = 0.0  # perturbation radius rho; 0 = the official value for (model, dataset), else 0.3
    adv_reg: float = 1.0  # weight of the adversarial BPR term
    begin_adv: int = 5  # first epoch (1-based) with the adversarial term
    user_lambda: float = 2.0  # VAT's lambda in g(L_u) = lambda * sigmoid(mean / L_u - 1)
    attack: str = "none"  # none | random | bandwagon
    fake_user_fraction: float = 0.01  # fake users as a fraction of real users
    n_targets: int = 5  # target items, drawn from the 20% least popular
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
                  ("data_format", self.data_format, ("lightgcn", "movielens", "recbole"))]
        for name, value, allowed in checks:
            if value not in allowed:
                raise RecsysError(f"{name}={value!r} is not one of {', '.join(allowed)}.")
        if self.eps < 0 or self.batch_size <= 0 or self.dim <= 0:
            raise RecsysError(f"eps={self.eps} must be >= 0, batch_size={self.batch_size} and dim={self.dim} > 0.")

    @property
    def radius(self) -> float:
        return self.eps or OFFICIAL_EPS.get((self.model, self.dataset), DEFAULT_EPS)


def load_data(config: RecConfig) -> InteractionData:
    if config.data_format == "lightgcn":
        folder = find_dataset_dir(config.dataset, config.data_dir)
        if folder is None:
            raise RecsysError(f"dataset {config.dataset!r} not found; pass --data-dir (a folder with train.txt and "
                              f"test.txt) or put it under $WORKBENCH_DATA/{config.dataset}.")
        data = read_lightgcn_dir(folder, name=config.dataset)
    else:
        if not config.data_dir:
            raise RecsysError(f"data_format={config.data_format} needs --data-dir pointing at the file.")
        reader = read_movielens if config.data_format == "movielens" else read_recbole_inter
        data = split_per_user(kcore(reader(config.data_dir), config.kcore), 0.2, seed=config.sample_seed,
                              name=config.dataset)
    if config.user_sample:
        data = subsample_users(data, config.user_sample, config.sample_seed)
    return data


class RobustRecommender:
    """BPR (+ APR / VAT adversarial term) on MF or LightGCN; one ``update`` is one epoch."""

    main_metric = "recall@20"
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
                                           seed=config.attack_seed, surrogate=surrogate, quiet=False)
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
                adv = adversarial_bpr(u, i, j, per_sample, cfg.radius, scale).mean()
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
        return {k: v.item() / n_batches for k, v in totals.items()} | {"epoch": float(self.epoch)}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        user_emb, item_emb = self.model.all_embeddings()
        bs = self.config.eval_batch_size
        metrics = ranking_metrics(user_emb, item_emb, self.seen, self.data.test, self.real_users, (10, 20), bs)
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
    name = config.dataset + (f"-u{config.user_sample}" if config.user_sample else "")
    return f"{name}-{config.model}-{config.attack}"


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
