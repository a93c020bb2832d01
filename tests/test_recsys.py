import math

import numpy as np
import pytest
import torch

from grp_workbench.harness.config import build_config
from grp_workbench.harness.trainer import train
from grp_workbench.recsys import RecsysError, attacks
from grp_workbench.recsys.attacks import SurrogateAttackConfig, poison
from grp_workbench.recsys.data import (
    InteractionData,
    kcore,
    read_lightgcn_dir,
    read_movielens,
    read_recbole_inter,
    split_per_user,
    to_csr,
)
from grp_workbench.recsys.defenses import adversarial_bpr, vulnerability_scale
from grp_workbench.recsys.metrics import ranking_metrics, target_item_metrics
from grp_workbench.recsys.models import LightGCN, normalized_adjacency
from grp_workbench.recsys.train import PRESETS, SPECS, RecConfig


def _write_lightgcn(folder, train, test):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text(train)
    (folder / "test.txt").write_text(test)
    return folder


# ---- loaders -------------------------------------------------------------------------------------
def test_lightgcn_reader_counts_duplicates_and_empty_users(tmp_path):
    folder = _write_lightgcn(tmp_path / "d", "0 0 1 1 2\n1 2 3\n2\n", "0 3\n1 0\n")
    with pytest.warns(UserWarning, match="1 duplicate interactions removed, 1 users without items"):
        data = read_lightgcn_dir(folder)
    assert (data.n_users, data.n_items, data.train.nnz, data.test.nnz) == (3, 4, 5, 2)
    assert data.train[0].indices.tolist() == [0, 1, 2]
    assert data.report["duplicate_interactions_removed"] == 1 and data.report["users_without_items"] == 1


def test_lightgcn_reader_names_file_and_line_of_a_malformed_line(tmp_path):
    folder = _write_lightgcn(tmp_path / "d", "0 1 2\n1 x 3\n", "0 3\n")
    with pytest.raises(RecsysError, match=r"train.txt:2: 'x' is not an integer id"):
        read_lightgcn_dir(folder)


def test_lightgcn_reader_rejects_ids_beyond_the_list_files(tmp_path):
    folder = _write_lightgcn(tmp_path / "d", "0 1 2\n1 5\n", "0 3\n")
    (folder / "item_list.txt").write_text("org_id remap_id\na 0\nb 1\nc 2\nd 3\n")
    with pytest.raises(RecsysError, match="item id 5 is out of range"):
        read_lightgcn_dir(folder)


def test_movielens_reader_kcore_and_split(tmp_path):
    rows = [f"{u}\t{i}\t{1 + (u + i) % 5}\t{1000 + 10 * i + u}" for u in range(1, 7) for i in range(1, 7)]
    rows.append("1\t1\t5\t999")  # a repeated pair
    rows.append("7\t1\t5\t999")  # a user below the 3-core
    (tmp_path / "u.data").write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match="1 duplicate interactions removed"):
        raw = read_movielens(tmp_path / "u.data")
    filtered = kcore(raw, 3)
    assert len(filtered.user_ids) == 6 and filtered.report["interactions_removed_by_3_core"] == 1
    data = split_per_user(filtered, test_fraction=0.5, seed=0)
    assert data.train.nnz == 18 and data.test.nnz == 18 and data.train.multiply(data.test).nnz == 0
    # chronological: every test interaction of a user is later than their training ones
    assert all(data.test[u].indices.min() > data.train[u].indices.max() for u in range(6))


def test_movielens_and_recbole_malformed_lines(tmp_path):
    (tmp_path / "u.data").write_text("1\t2\t5\t100\n1\t2\t5\n")
    with pytest.raises(RecsysError, match=r"u.data:2: expected 4 fields"):
        read_movielens(tmp_path / "u.data")
    (tmp_path / "x.inter").write_text("user:token\titem_id:token\n")
    with pytest.raises(RecsysError, match="no user_id column"):
        read_recbole_inter(tmp_path / "x.inter")
    (tmp_path / "y.inter").write_text("user_id:token\titem_id:token\ta\tb\nu1\ti1\n")
    with pytest.raises(RecsysError, match=r"y.inter:2: 2 fields but the header has 4"):
        read_recbole_inter(tmp_path / "y.inter")


def test_recbole_reader_maps_tokens_to_contiguous_ids(tmp_path):
    (tmp_path / "z.inter").write_text("user_id:token\titem_id:token\trating:float\nbob\tx\t1\nann\ty\t1\nbob\ty\t1\n")
    data = read_recbole_inter(tmp_path / "z.inter")
    assert data.user_ids.tolist() == ["ann", "bob"] and data.item_ids.tolist() == ["x", "y"]
    assert sorted(zip(data.users.tolist(), data.items.tolist())) == [(0, 1), (1, 0), (1, 1)]


# ---- models and metrics --------------------------------------------------------------------------
def test_lightgcn_propagation_equals_dense_reference():
    train = to_csr(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 3, 3)
    model = LightGCN(3, 3, normalized_adjacency(train), dim=4, n_layers=3)
    users, items = model.all_embeddings()
    a = np.zeros((6, 6))
    for u, i in zip(*train.nonzero()):
        a[u, 3 + i] = a[3 + i, u] = 1
    d = np.diag(1 / np.sqrt(a.sum(1)))
    norm = torch.tensor(d @ a @ d, dtype=torch.float32)
    e0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    expected = torch.stack([e0, norm @ e0, norm @ norm @ e0, norm @ norm @ norm @ e0]).mean(0)
    assert torch.allclose(torch.cat([users, items]).detach(), expected, atol=1e-6)
    # gradients through the symmetric sparse product equal those of the dense reference
    weights = torch.randn(6, 4)
    (torch.cat([users, items]) * weights).sum().backward()
    ego = e0.clone().requires_grad_(True)
    (torch.stack([ego, norm @ ego, norm @ norm @ ego, norm @ norm @ norm @ ego]).mean(0) * weights).sum().backward()
    grads = torch.cat([model.user_embedding.weight.grad, model.item_embedding.weight.grad])
    assert torch.allclose(grads, ego.grad, atol=1e-6)


def test_recall_ndcg_and_target_hit_ratio_match_hand_computation():
    # 2 users, 5 items; identity-like embeddings make item scores explicit.
    item_emb = torch.eye(5)
    user_emb = torch.tensor([[5.0, 4, 3, 2, 1], [1.0, 2, 3, 4, 5]])
    seen = to_csr(np.array([0, 1]), np.array([0, 4]), 2, 5)  # user0 saw item0, user1 saw item4
    truth = to_csr(np.array([0, 0, 1]), np.array([2, 4, 0]), 2, 5)
    out = ranking_metrics(user_emb, item_emb, seen, truth, ks=(2,))
    # user0 ranking (item0 masked): 1,2,3,4 -> top2 = [1,2]: one hit (item2) at rank 2 of 2 relevant
    # user1 ranking (item4 masked): 3,2,1,0 -> top2 = [3,2]: no hit
    assert out["recall@2"] == pytest.approx((0.5 + 0) / 2)
    assert out["ndcg@2"] == pytest.approx(((1 / math.log2(3)) / (1 + 1 / math.log2(3)) + 0) / 2)
    target = target_item_metrics(user_emb, item_emb, seen, truth, np.array([3]), np.array([0, 1]), ks=(1, 3))
    # target item3: user0 rank 3 (after 1, 2), user1 rank 1; neither has it
    assert target["t_hr@1"] == pytest.approx(0.5) and target["t_hr@3"] == pytest.approx(1.0)
    assert target["t_ndcg@3"] == pytest.approx((1 / math.log2(4) + 1.0) / 2)


# ---- attacks and defenses ------------------------------------------------------------------------
def _toy_data(n_users=200, n_items=100, seed=0) -> InteractionData:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), 10)
    items = (users % 10) * 10 + rng.integers(0, 10, size=len(users))  # 10 user groups, each likes a block
    test_items = (np.arange(n_users) % 10) * 10 + rng.integers(0, 10, size=n_users)
    train = to_csr(users, items, n_users, n_items)
    test = to_csr(np.arange(n_users), test_items, n_users, n_items)
    test = (test - test.multiply(train)).tocsr()
    test.eliminate_zeros()
    return InteractionData("toy", n_users, n_items, train, test)


@pytest.mark.parametrize("attack", ["random", "bandwagon", "dl"])
def test_attack_adds_exactly_the_configured_users_and_never_touches_test_data(attack):
    data = _toy_data()
    poisoned, info = poison(data, attack, fake_user_fraction=0.05, n_targets=3, seed=1, surrogate=FAST_SURROGATE)
    assert poisoned.n_users == data.n_users + 10 and len(info.fake_profiles) == 10
    assert (poisoned.train[: data.n_users] != data.train).nnz == 0
    assert (poisoned.test[: data.n_users] != data.test).nnz == 0 and poisoned.test[data.n_users :].nnz == 0
    fake_rows = poisoned.train[data.n_users :]
    assert all(set(info.targets) <= set(fake_rows[r].indices) for r in range(10))
    popularity = data.item_popularity()
    assert all(popularity[t] <= np.quantile(popularity, 0.2) for t in info.targets)
    assert np.array_equal(poison(data, "none", n_targets=3, seed=1)[1].targets, info.targets)  # same when clean


FAST_SURROGATE = SurrogateAttackConfig(pretrain_epochs=5, batch_size=256, users_per_round=2)


def test_dl_attack_spreads_fillers_and_is_cached(monkeypatch):
    data = _toy_data()
    _, first = poison(data, "dl", fake_user_fraction=0.05, n_targets=3, seed=1, surrogate=FAST_SURROGATE)
    fillers = [set(p) - set(first.targets) for p in first.fake_profiles]
    assert len(set.union(*fillers)) > max(len(f) for f in fillers)  # decayed weights spread the fillers

    def must_not_run(*args, **kwargs):
        raise AssertionError("the crafted profiles should come from the cache")

    monkeypatch.setattr(attacks, "dl_attack_profiles", must_not_run)
    _, again = poison(data, "dl", fake_user_fraction=0.05, n_targets=3, seed=1, surrogate=FAST_SURROGATE)
    assert all(np.array_equal(a, b) for a, b in zip(first.fake_profiles, again.fake_profiles))


def test_vat_radius_is_larger_for_lower_loss_users():
    users = torch.tensor([0, 0, 1, 2])
    losses = torch.tensor([0.1, 0.1, 1.0, 2.0])  # user0 sums to 0.2, the best fitted
    scale = vulnerability_scale(users, losses, user_lambda=2.0)
    assert scale[0] == scale[1] and scale[0] > scale[2] > scale[3]
    mean = (0.2 + 1.0 + 2.0) / 3
    assert scale[2].item() == pytest.approx(2 * torch.sigmoid(torch.tensor(mean / 1.0 - 1)).item(), rel=1e-5)


def test_adversarial_perturbation_has_the_requested_norm_and_raises_the_loss():
    torch.manual_seed(0)
    u, i, j = (torch.randn(8, 4, requires_grad=True) for _ in range(3))
    clean = torch.nn.functional.softplus((u * j).sum(1) - (u * i).sum(1))
    adversarial = adversarial_bpr(u, i, j, clean, eps=0.5)
    assert (adversarial > clean).all()
    adversarial.mean().backward()
    assert u.grad is not None


# ---- training through the harness ---------------------------------------------------------------
def _write_toy_folder(folder):
    """The toy data in the LightGCN text format, for training through the config's data_dir."""
    data = _toy_data()
    folder.mkdir()
    for name, matrix in (("train.txt", data.train), ("test.txt", data.test)):
        lines = [" ".join(map(str, [u, *matrix[u].indices])) for u in range(data.n_users) if matrix[u].nnz]
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_mf_learns_a_toy_dataset_in_seconds(tmp_path):
    folder = _write_toy_folder(tmp_path / "toy")
    config = build_config(RecConfig, PRESETS, "paper", {
        "dataset": "toy", "data_dir": str(folder), "total_steps": 8, "eval_every": 4, "batch_size": 256,
        "lr": 0.01, "begin_adv": 2, "attack": "random", "fake_user_fraction": 0.05, "n_targets": 2})
    summary = train(SPECS["vat"], config, tmp_path / "run", "paper", quiet=True)
    # 10 disjoint blocks of 10 items: a fitted model ranks the user's block first (random recall@20 ~ 0.2)
    assert summary["final"]["recall@20"] > 0.6
    assert summary["task"] == "toy-mf-random" and summary["method"] == "vat"


def test_dl_attack_raises_target_hit_ratio_over_clean_training(tmp_path):
    folder = _write_toy_folder(tmp_path / "toy")
    hit_ratio = {}
    for attack in ("none", "dl"):
        config = build_config(RecConfig, PRESETS, "paper", {
            "dataset": "toy", "data_dir": str(folder), "total_steps": 8, "eval_every": 8, "batch_size": 256,
            "lr": 0.01, "attack": attack, "fake_user_fraction": 0.05, "n_targets": 2, "dl_pretrain_epochs": 5,
            "dl_users_per_round": 2})
        hit_ratio[attack] = train(SPECS["bpr"], config, tmp_path / attack, "paper", quiet=True)["final"]["t_hr@10"]
    assert hit_ratio["dl"] > hit_ratio["none"] + 0.05, hit_ratio
