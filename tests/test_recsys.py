import math

import numpy as np
import pytest
import torch

from grp_workbench.harness.config import build_config
from grp_workbench.harness.device import make_policy
from grp_workbench.harness.runs import RunDir
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
    split_validation,
    to_csr,
)
from grp_workbench.recsys.defenses import adversarial_bpr, vulnerability_scale
from grp_workbench.recsys.metrics import ranking_metrics, target_item_metrics
from grp_workbench.recsys.models import LightGCN, normalized_adjacency
from grp_workbench.recsys.train import PRESETS, SPECS, RecConfig, load_data


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
    assert summary["task"] == "toy-mf-random-5pct" and summary["method"] == "vat"


def test_every_attack_raises_target_hit_ratio_over_clean_training(tmp_path):
    folder = _write_toy_folder(tmp_path / "toy")
    hit_ratio = {}
    for attack in ("none", "random", "bandwagon", "dl"):
        config = build_config(RecConfig, PRESETS, "paper", {
            "dataset": "toy", "data_dir": str(folder), "total_steps": 30, "eval_every": 30, "batch_size": 256,
            "lr": 0.01, "attack": attack, "fake_user_fraction": 0.05, "n_targets": 2, "dl_pretrain_epochs": 5,
            "dl_users_per_round": 2})
        hit_ratio[attack] = train(SPECS["bpr"], config, tmp_path / attack, "paper", quiet=True)["final"]["t_hr@10"]
    for attack in ("random", "bandwagon", "dl"):  # measured: clean 0.115, attacked 0.19-0.21
        assert hit_ratio[attack] > hit_ratio["none"] + 0.05, hit_ratio


def test_bandwagon_holds_the_n_most_popular_and_filler_size_sets_the_length():
    data = _toy_data()
    n = attacks.filler_count(data)
    assert n == int(data.n_train / data.n_users)  # ARLib: the real users' mean profile length
    most_popular = np.argsort(-data.item_popularity(), kind="stable")
    _, bandwagon = poison(data, "bandwagon", fake_user_fraction=0.05, n_targets=2, seed=0)
    popular = [i for i in most_popular if i not in bandwagon.targets][:n]
    for profile in bandwagon.fake_profiles:
        assert set(popular) <= set(profile) and set(bandwagon.targets) <= set(profile)
        assert len(profile) == 2 + n + n // 2  # targets + N popular + N//2 random
    _, random = poison(data, "random", fake_user_fraction=0.05, n_targets=2, seed=0, filler_size=7)
    assert {len(p) for p in random.fake_profiles} == {2 + 7}
    _, popular_targets = poison(data, "none", n_targets=2, seed=0, target_mode="popular")
    top_tenth = set(most_popular[: data.n_items // 10])
    assert set(popular_targets.targets) <= top_tenth and not set(bandwagon.targets) & top_tenth
    with pytest.raises(RecsysError, match="filler_size=-1 must be >= 0"):
        attacks.filler_count(data, -1)


def test_apr_takes_the_official_eps_and_vat_its_table(tmp_path):
    gowalla = build_config(RecConfig, PRESETS, "paper", {})
    assert gowalla.data_name == "gowalla"
    assert gowalla.radius("apr") == 0.3 and gowalla.radius("vat") == 0.6
    assert build_config(RecConfig, PRESETS, "paper", {"eps": "0.4"}).radius("apr") == 0.4


def test_movielens_run_takes_its_name_and_eps_from_the_data(tmp_path):
    folder = tmp_path / "ml-toy"
    folder.mkdir()
    rows = [f"{u}\t{i}\t4\t{1000 + u + i}" for u in range(1, 41) for i in range(1, 31) if (u + i) % 3]
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    config = build_config(RecConfig, PRESETS, "paper", {
        "data_format": "movielens", "data_dir": str(folder / "u.data"), "kcore": "3", "attack": "random",
        "fake_user_fraction": "0.05", "total_steps": "2", "eval_every": "2"})
    assert config.data_name == "ml-toy" and config.radius("vat") == 0.3  # not Gowalla's 0.6
    summary = train(SPECS["vat"], config, tmp_path / "run", "paper", quiet=True)
    assert summary["task"] == "ml-toy-mf-random-5pct"
    one, three = (SPECS["bpr"].task(build_config(RecConfig, PRESETS, "paper", {"attack": "random",
                                                                                "fake_user_fraction": f}))
                  for f in ("0.01", "0.03"))
    assert (one, three) == ("gowalla-mf-random-1pct", "gowalla-mf-random-3pct")  # two report rows


def test_best_is_chosen_on_validation_and_early_stopping_reads_it(tmp_path):
    folder = _write_toy_folder(tmp_path / "toy")
    values = {"dataset": "toy", "data_dir": str(folder), "total_steps": "12", "eval_every": "2", "batch_size": "256",
              "lr": "0.01"}
    summary = train(SPECS["bpr"], build_config(RecConfig, PRESETS, "paper", values), tmp_path / "a", "paper",
                    quiet=True)
    assert summary["main_metric"] == "valid_recall@20"
    evals = RunDir(tmp_path / "a").read_metrics("eval")
    best = max(evals, key=lambda row: row["valid_recall@20"])
    assert summary["best"]["step"] == best["step"]  # chosen on validation, whatever test says
    no_valid = train(SPECS["bpr"], build_config(RecConfig, PRESETS, "paper", {**values, "valid_fraction": "0"}),
                     tmp_path / "b", "paper", quiet=True)
    assert no_valid["main_metric"] == "recall@20" and no_valid["best"] == {"step": -1}  # never a best on test


def test_validation_split_keeps_a_training_item_per_user():
    data = split_validation(_toy_data(), 0.1, seed=0)
    degree = np.diff(_toy_data().train.indptr)
    assert data.valid.nnz == int((degree - (degree * 0.9).astype(int)).sum()) > 0
    assert (np.diff(data.train.indptr) >= 1).all() and data.train.multiply(data.valid).nnz == 0
    assert data.train.nnz + data.valid.nnz == _toy_data().train.nnz


def test_delta_t_hr_is_taken_against_the_clean_run_of_the_same_seed_and_defense():
    from grp_workbench.recsys.benchmarks import attacks_that_did_not_attack, clean_task, with_attack_deltas

    def record(method, task, seed, t_hr):
        return {"method": method, "task": task, "seed": seed, "metrics": {"t_hr@50": t_hr}}

    records = [record("none", "g-mf-none", 0, 0.01), record("none", "g-mf-none", 1, 0.0),
               record("vat", "g-mf-none", 0, 0.02),
               record("none", "g-mf-random-1pct", 0, 0.05), record("none", "g-mf-random-1pct", 1, 0.03),
               record("vat", "g-mf-random-1pct", 0, 0.03), record("none", "g-mf-bandwagon-1pct", 0, 0.0)]
    assert clean_task("g-mf-random-1pct") == "g-mf-none" and clean_task("g-mf-none") is None
    derived = {(r["method"], r["task"], r["seed"]): r["metrics"] for r in with_attack_deltas(records)}
    assert derived[("none", "g-mf-random-1pct", 0)]["delta_t_hr@50"] == pytest.approx(0.04)
    assert derived[("none", "g-mf-random-1pct", 0)]["t_hr_ratio@50"] == pytest.approx(5.0)
    assert derived[("none", "g-mf-random-1pct", 1)]["delta_t_hr@50"] == pytest.approx(0.03)
    assert "t_hr_ratio@50" not in derived[("none", "g-mf-random-1pct", 1)]  # clean 0: no ratio
    assert derived[("vat", "g-mf-random-1pct", 0)]["delta_t_hr@50"] == pytest.approx(0.01)
    assert attacks_that_did_not_attack(with_attack_deltas(records)) == ["g-mf-bandwagon-1pct"]


def test_recsys_bad_input_is_one_line(tmp_path):
    (tmp_path / "u.data").write_text("1\tabc\t5\t100\n")
    with pytest.raises(RecsysError, match=r"u.data:1: item id 'abc' is not a non-negative integer"):
        read_movielens(tmp_path / "u.data")
    (tmp_path / "u.data").write_text("1\t2\tfive\t100\n")
    with pytest.raises(RecsysError, match=r"u.data:1: rating 'five' is not a number\.$"):
        read_movielens(tmp_path / "u.data")
    config = build_config(RecConfig, PRESETS, "paper", {"data_dir": str(tmp_path / "u.data")})
    with pytest.raises(RecsysError, match="is a file, and data_format=lightgcn reads a folder"):
        load_data(config)
    algorithm = SPECS["bpr"].build(build_config(RecConfig, PRESETS, "paper", {"user_sample": "50"}),
                                   make_policy("cpu", "fp32"))
    with pytest.warns(UserWarning, match="collapsed"):
        for _ in range(3):
            algorithm._warn_if_collapsed(math.log(2))


def test_train_help_lists_the_config_keys():
    from typer.testing import CliRunner

    from grp_workbench.harness.cli import app

    result = CliRunner().invoke(app, ["recsys", "train", "vat", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for key in ("fake_user_fraction = 0.01", "filler_size = 0", "target_mode = 'unpopular'", "valid_fraction = 0.1"):
        assert key in result.output
