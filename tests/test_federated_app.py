import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from grp_workbench.federated import FederatedError
from grp_workbench.federated.app import CuriousFedAvg, FLSettings, batch_gradient, client_app, make_model, read_capture
from grp_workbench.federated.attack import client_truth
from grp_workbench.federated.data import load_mnist
from grp_workbench.federated.defenses import clip_global_norm, defend, prune_smallest
from grp_workbench.federated.partition import assign_roles, client_batch, dirichlet_partition, iid_partition


@pytest.fixture(autouse=True)
def flower_identity(monkeypatch):
    """Messages need a run identity, which Flower's runtimes set; calling the app directly sets it here."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _train_message(model, server_round=1, node_id=7):
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "config": ConfigRecord({"server-round": server_round})})
    return Message(content=content, dst_node_id=node_id, message_type="train")


def _context(partition_id=3, n_partitions=10, node_id=7, **run_config):
    """A client's context; a client writes its note of a captured round only where a test asks
    (``capture_rounds`` and ``output_dir`` given), never into the checkout."""
    run_config.setdefault("capture_rounds", "")
    return Context(run_id=1, node_id=node_id, node_config={"partition-id": partition_id,
                                                           "num-partitions": n_partitions},
                   state=RecordDict(), run_config=run_config)


# ---- who holds what ------------------------------------------------------------------------------
def test_roles_are_disjoint_and_stratified():
    labels = torch.arange(10).repeat(1000)
    roles = assign_roles(labels, seed=0)
    sets = [set(v.tolist()) for v in roles.values()]
    assert sum(len(s) for s in sets) == 10_000 and len(set.union(*sets)) == 10_000
    assert len(roles["server_test"]) == 1000 and len(roles["prior"]) == 3000
    assert np.bincount(labels[roles["prior"]].numpy()).tolist() == [300] * 10


def test_iid_and_dirichlet_partitions_cover_the_pool_once():
    labels = np.repeat(np.arange(10), 60)
    for parts in (iid_partition(600, 100, seed=0), dirichlet_partition(labels, 20, 0.1, seed=0)):
        joined = np.concatenate(parts)
        assert len(joined) == 600 and len(np.unique(joined)) == 600
    skewed = dirichlet_partition(labels, 20, 0.1, seed=0)
    mixed = dirichlet_partition(labels, 20, 100.0, seed=0)
    classes = [np.mean([len(np.unique(labels[p])) for p in parts]) for parts in (skewed, mixed)]
    assert classes[0] < classes[1]  # small alpha gives each client fewer classes
    with pytest.raises(FederatedError, match="dirichlet-alpha"):
        dirichlet_partition(labels, 20, 0.0, seed=0)


# ---- the client ---------------------------------------------------------------------------------
def test_fedsgd_client_returns_one_sgd_step_on_its_recomputable_batch():
    model = make_model(0)
    reply = client_app(_train_message(model), _context(batch_size=4, local_lr=0.1))
    metrics = reply.content["metrics"]
    assert dict(metrics) == {"num-examples": 4, "local-steps": 1}  # no identifier the protocol does not need
    settings = FLSettings(batch_size=4)
    from grp_workbench.federated.app import client_partitions, mnist_with_roles

    data, _ = mnist_with_roles("", 0)
    mine = client_partitions("", 0, 10, "iid", 0.5)[3]
    batch = client_batch(mine, settings.batch_size, 1, 3, settings.seed)
    gradient = batch_gradient(model, data.images[batch], data.labels[batch])
    returned = reply.content["arrays"].to_torch_state_dict()
    for (name, weight), grad in zip(model.named_parameters(), gradient):
        assert torch.allclose(returned[name], weight.detach() - 0.1 * grad, atol=1e-6)


def test_defenses_clip_prune_and_noise():
    update = [torch.full((10,), 3.0), torch.arange(10.0)]
    clipped = clip_global_norm(update, 1.0)
    assert torch.sqrt(sum(t.pow(2).sum() for t in clipped)).item() == pytest.approx(1.0, rel=1e-5)
    pruned = prune_smallest([torch.arange(10.0)], 0.2)[0]
    assert pruned.tolist() == [0, 0] + list(range(2, 10))
    noisy = defend("noise", update, torch.Generator().manual_seed(0), noise_std=0.5)
    assert not torch.equal(noisy[0], update[0])
    with pytest.raises(FederatedError, match="defense='blur'"):
        defend("blur", update, torch.Generator())


def test_the_server_cannot_regenerate_the_client_noise():
    """The reconstruction an independent review did against the former client (noise seeded from run
    seed, round and partition id, all known to the server): it must leave the noise in place now."""
    from grp_workbench.federated.app import client_partitions, mnist_with_roles

    model, std = make_model(0), 0.05
    context = _context(batch_size=4, local_lr=1.0, defense="noise", noise_std=std)
    replies = [client_app(_train_message(model), context).content["arrays"].to_torch_state_dict() for _ in range(2)]
    data, _ = mnist_with_roles("", 0)
    batch = client_batch(client_partitions("", 0, 10, "iid", 0.5)[3], 4, 1, 3, 0)  # the server can recompute it
    clean = batch_gradient(model, data.images[batch], data.labels[batch])
    noise = [w.detach() - replies[0][name] - g for (name, w), g in zip(model.named_parameters(), clean)]
    seed = np.random.SeedSequence([0, 1, 3]).generate_state(1)[0]
    guess = torch.Generator().manual_seed(int(seed))
    # update = w - lr * (g + n) with lr 1: the server subtracts its regenerated guess of n
    residual = torch.cat([(n - std * torch.randn(n.shape, generator=guess)).flatten() for n in noise])
    assert residual.std().item() > std  # ~ std * sqrt(2), not the 2.6e-7 the seeded client allowed
    assert not torch.equal(replies[0]["features.0.weight"], replies[1]["features.0.weight"])  # fresh noise


def _capture_one_update(tmp_path, batch_size, local_lr, model_name="smallcnn"):
    """Client 3's round-1 FedSGD update, aggregated by the curious server, which records it."""
    model = make_model(0, model_name)
    reply = client_app(_train_message(model), _context(batch_size=batch_size, local_lr=local_lr, capture_rounds="1",
                                                       output_dir=str(tmp_path), model=model_name))
    settings = FLSettings(local_lr=local_lr, batch_size=batch_size, capture_rounds="1", output_dir=str(tmp_path),
                          model=model_name)
    strategy = CuriousFedAvg(settings, tmp_path, min_train_nodes=1, min_available_nodes=1)
    strategy.sent[1] = model.state_dict()
    arrays, _ = strategy.aggregate_train(1, [reply])
    return model, strategy, arrays


def test_curious_server_records_an_update_the_attacker_can_turn_into_the_gradient(tmp_path):
    model, strategy, arrays = _capture_one_update(tmp_path, batch_size=2, local_lr=0.05)
    assert arrays is not None and len(strategy.captured) == 1
    record = read_capture(strategy.captured[0])
    assert record["batch_size"] == 2 and record["local_steps"] == 1 and record["node_id"] == 7
    assert "partition_id" not in record and client_truth(record)["partition_id"] == 3  # the client's note only
    data = load_mnist(None, "test")
    from grp_workbench.federated.app import client_partitions

    batch = client_batch(client_partitions("", 0, 10, "iid", 0.5)[3], 2, 1, 3, 0)
    true_gradient = batch_gradient(model, data.images[batch], data.labels[batch])
    for recovered, true in zip(record["gradient"], true_gradient):
        assert torch.allclose(recovered, true, atol=1e-4)


def test_bad_run_config_names_the_key():
    with pytest.raises(Exception, match="batch_sise"):
        FLSettings.from_run_config({"batch-sise": 4})
    with pytest.raises(FederatedError, match="mode='fedsdg'"):
        FLSettings.from_run_config({"mode": "fedsdg"})
    with pytest.raises(FederatedError, match=r"capture_rounds='x': 'x' is not a non-negative integer"):
        FLSettings.from_run_config({"capture-rounds": "x"})
    with pytest.raises(FederatedError, match=r"capture_clients='0,b'"):
        FLSettings.from_run_config({"capture-clients": "0,b"})


def test_a_bad_capture_list_stops_the_simulate_command_before_ray_starts():
    import sys

    from typer.testing import CliRunner

    from grp_workbench.harness.cli import app

    result = CliRunner().invoke(app, ["federated", "simulate", "--set", "capture_rounds=x"])
    # the console script prints this one line (exit 2); CliRunner hands back the error itself
    assert isinstance(result.exception, FederatedError) and "capture_rounds='x'" in str(result.exception)
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_attack_runs_on_a_capture_and_scores_against_the_recomputed_batch(tmp_path):
    from grp_workbench.federated.app import client_partitions
    from grp_workbench.federated.attack import capture_ground_truth, run_attack

    _, strategy, _ = _capture_one_update(tmp_path, batch_size=1, local_lr=0.1)
    record = read_capture(strategy.captured[0])
    images, labels = capture_ground_truth(record)
    batch = client_batch(client_partitions("", 0, 10, "iid", 0.5)[3], 1, 1, 3, 0)
    data = load_mnist(None, "test")
    assert torch.equal(images, data.images[batch]) and torch.equal(labels, data.labels[batch])
    result = run_attack("ig", strategy.captured[0], preset="tiny", overrides={"iterations": "200"})
    assert result["metrics"]["label_accuracy"] == 1.0 and result["metrics"]["psnr"] > 15
    with pytest.raises(FederatedError, match="train-prior"):
        run_attack("gifd", strategy.captured[0], preset="tiny")


def test_the_resnet_victim_is_captured_and_attacked_like_the_cnn(tmp_path):
    """model=resnet: 32x32 inputs (MNIST zero-padded), the capture names its model, the attacker
    rebuilds it, and a capture checked against the other model is refused in one line."""
    from grp_workbench.federated.attack import run_attack
    from grp_workbench.federated.models import SmallResNet

    model, strategy, _ = _capture_one_update(tmp_path, batch_size=1, local_lr=0.1, model_name="resnet")
    assert isinstance(model, SmallResNet) and model.features[0].padding == (2, 2, 2, 2)
    record = read_capture(strategy.captured[0])
    assert record["settings"]["model"] == "resnet" and len(record["gradient"]) == len(list(model.parameters()))
    result = run_attack("ig", strategy.captured[0], preset="tiny", overrides={"iterations": "20"})
    assert result["images"].shape == (1, 1, 28, 28) and np.isfinite(result["metrics"]["psnr"])
    foreign = torch.load(strategy.captured[0], weights_only=True)
    foreign["settings"]["model"] = "smallcnn"
    torch.save(foreign, tmp_path / "foreign.pt")
    with pytest.raises(FederatedError, match="made on another model"):
        read_capture(tmp_path / "foreign.pt")
    with pytest.raises(FederatedError, match="model='vgg'"):
        FLSettings.from_run_config({"model": "vgg"})


# ---- captures ------------------------------------------------------------------------------------
def test_captures_that_are_missing_corrupt_foreign_or_unsafe_are_one_line(tmp_path):
    import os
    from pathlib import Path


    _, strategy, _ = _capture_one_update(tmp_path, batch_size=1, local_lr=0.1)
    good = Path(strategy.captured[0])
    record = torch.load(good, weights_only=True)
    with pytest.raises(FederatedError, match=f"capture {tmp_path / 'nope.pt'} does not exist"):
        read_capture(tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[:200])
    with pytest.raises(FederatedError, match=f"capture {corrupt} is not a readable capture"):
        read_capture(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({**record, "global_weights": torch.nn.Linear(3, 2).state_dict()}, foreign)
    with pytest.raises(FederatedError, match=f"capture {foreign} was made on another model: its global_weights"):
        read_capture(foreign)

    class Payload:  # what an attacker would plant: unpickling calls os.system
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    unsafe = tmp_path / "unsafe.pt"
    torch.save({**record, "settings": Payload()}, unsafe)
    with pytest.raises(FederatedError, match="refused because unpickling it could run code"):
        read_capture(unsafe)
    assert not (tmp_path / "pwned").exists()


def test_a_simulation_never_overwrites_captures_of_other_settings(tmp_path):
    import dataclasses
    import json

    from grp_workbench.federated.simulate import _require_same_settings

    settings = FLSettings(output_dir=str(tmp_path))
    (tmp_path / "summary.json").write_text(json.dumps({"settings": dataclasses.asdict(settings), "num_clients": 10}))
    _require_same_settings(settings, 10)  # the same simulation again may rewrite its own captures
    with pytest.raises(FederatedError, match="holds the captures of a simulation with other settings \\(batch_size: "
                                             "8 -> 2, num_clients: 10 -> 20\\)"):
        _require_same_settings(dataclasses.replace(settings, batch_size=2), 20)


def test_a_failing_client_is_recorded_and_identifiers_are_not_averaged(tmp_path):
    from flwr.app import Error

    model = make_model(0)
    good = [client_app(_train_message(model, node_id=node), _context(partition_id=p, node_id=node, batch_size=4,
                                                                     capture_rounds="1", output_dir=str(tmp_path)))
            for p, node in ((1, 11), (3, 5))]
    failed = Message(Error(code=0, reason="client crashed: out of memory"), reply_to=_train_message(model))
    settings = FLSettings(batch_size=4, capture_rounds="1", capture_clients="all", output_dir=str(tmp_path))
    strategy = CuriousFedAvg(settings, tmp_path, min_train_nodes=1, min_available_nodes=1)
    strategy.sent[1] = model.state_dict()
    _, metrics = strategy.aggregate_train(1, [*good, failed])
    assert strategy.rounds == [{"round": 1, "participants": 2, "failures": 1, "failed_nodes": [7],
                                "failure_reasons": ["client crashed: out of memory"]}]
    assert [Path(c).name for c in strategy.captured] == ["round001-node5.pt", "round001-node11.pt"]
    # capture_clients=1: only the reply with the lowest node id
    one = CuriousFedAvg(dataclasses.replace(settings, capture_clients="1"), tmp_path / "one", min_train_nodes=1,
                        min_available_nodes=1)
    one.sent[1] = model.state_dict()
    one.aggregate_train(1, [*good, failed])
    assert [Path(c).name for c in one.captured] == ["round001-node5.pt"]
    assert dict(metrics) == {"num-examples": 8, "local-steps": 1.0, "clients": 2}  # no averaged partition id


def test_soteria_prunes_the_least_informative_features_of_the_last_layer():
    from grp_workbench.federated.defenses import soteria, soteria_mask

    model = make_model(0)
    data = load_mnist(None, "test")
    images, labels = data.images[:4], data.labels[:4]
    # untrained, about half the features are inactive on 4 images (score 0): the official strict
    # "< percentile" rule prunes none of them at 25%, and 60% of all features at 60%
    assert int((soteria_mask(model, images, rate=25.0) == 0).sum()) == 0
    mask = soteria_mask(model, images, rate=60.0)
    hidden = model.head[-1].in_features
    assert mask.shape == (hidden,) and int((mask == 0).sum()) == pytest.approx(0.6 * hidden, abs=2)
    gradient = batch_gradient(model, images, labels)
    shared = soteria(model, images, gradient, rate=60.0)
    assert torch.equal(shared[-2][:, mask == 0], torch.zeros_like(shared[-2][:, mask == 0]))
    assert all(torch.equal(a, b) for a, b in zip(shared[:-2] + shared[-1:], gradient[:-2] + gradient[-1:]))
    # the client applies it in FedSGD; the adaptive attacker reads the same columns off the target
    reply = client_app(_train_message(model), _context(batch_size=4, local_lr=1.0, defense="soteria",
                                                       soteria_rate=60.0))
    update = [w.detach() - reply.content["arrays"].to_torch_state_dict()[n] for n, w in model.named_parameters()]
    assert int((update[-2][0] == 0).sum()) >= int((mask == 0).sum()) - 2
    with pytest.raises(FederatedError, match="soteria perturbs one FedSGD gradient"):
        FLSettings.from_run_config({"defense": "soteria", "mode": "fedavg"})


def test_local_dp_matches_flowers_gaussian_mechanism_and_reports_epsilon(tmp_path):
    from grp_workbench.federated.defenses import local_dp, local_dp_std

    # hand-checked: clip 1, epsilon 1, delta 1e-5 -> sqrt(2 ln 125000) = 4.8448
    assert local_dp_std(1.0, 1.0, 1e-5) == pytest.approx(4.8448, abs=1e-4)
    update = [torch.full((1000, 100), 1.0)]  # norm 316: clipped to 2 by Flower's compute_clip_model_update
    noisy = local_dp(update, torch.Generator().manual_seed(0), clip_norm=2.0, epsilon=4.0, delta=1e-5)[0]
    assert (noisy - 2.0 / 316.2278).std().item() == pytest.approx(local_dp_std(2.0, 4.0, 1e-5), rel=0.02)
    assert noisy.mean().item() == pytest.approx(2.0 / 316.2278, abs=0.02)
    with pytest.raises(FederatedError, match="dp_epsilon > 0"):
        FLSettings.from_run_config({"defense": "dp", "dp-epsilon": 0.0})
    # the capture states the privacy of the update it holds
    model = make_model(0)
    reply = client_app(_train_message(model), _context(batch_size=4, defense="dp", dp_epsilon=8.0, capture_rounds="1",
                                                       output_dir=str(tmp_path)))
    settings = FLSettings(batch_size=4, defense="dp", dp_epsilon=8.0, capture_rounds="1", output_dir=str(tmp_path))
    strategy = CuriousFedAvg(settings, tmp_path, min_train_nodes=1, min_available_nodes=1)
    strategy.sent[1] = model.state_dict()
    strategy.aggregate_train(1, [reply])
    record = read_capture(strategy.captured[0])
    assert record["defense"]["epsilon"] == 8.0 and record["defense"]["noise_std"] == pytest.approx(
        local_dp_std(4.0, 8.0, 1e-5))


def test_client_data_is_a_setting_mnist_digits_or_an_image_folder(tmp_path):
    from PIL import Image

    from grp_workbench.federated.app import client_pool
    from grp_workbench.federated.attack import capture_ground_truth

    # scikit-learn digits as the clients' data: the capture's ground truth comes from the same pool
    model = make_model(0)
    reply = client_app(_train_message(model), _context(batch_size=2, client_data="digits", capture_rounds="1",
                                                       output_dir=str(tmp_path)))
    settings = FLSettings(batch_size=2, client_data="digits", capture_rounds="1", output_dir=str(tmp_path))
    strategy = CuriousFedAvg(settings, tmp_path / "captures", min_train_nodes=1, min_available_nodes=1)
    strategy.sent[1] = model.state_dict()
    strategy.aggregate_train(1, [reply])
    images, labels = capture_ground_truth(read_capture(strategy.captured[0]))
    digits, _ = client_pool("digits", "", 0)
    assert images.shape == (2, 1, 28, 28) and any(torch.equal(images[0], d) for d in digits.images)
    returned = reply.content["arrays"].to_torch_state_dict()
    gradient = batch_gradient(model, images, labels)
    for (name, weight), grad in zip(model.named_parameters(), gradient):
        assert torch.allclose(returned[name], weight.detach() - 0.1 * grad, atol=1e-6)
    # an image folder, one subfolder per label
    for label in (0, 1):
        (tmp_path / "imgs" / str(label)).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((32, 32), 40 * (k + 1) + label, dtype=np.uint8)).save(
                tmp_path / "imgs" / str(label) / f"{k}.png")
    folder, pool = client_pool(str(tmp_path / "imgs"), "", 0)
    assert folder.images.shape == (6, 1, 28, 28) and folder.labels.tolist() == [0, 0, 0, 1, 1, 1] and len(pool) == 6
    with pytest.raises(FederatedError, match="client_data='nowhere' must be mnist, digits or a folder"):
        FLSettings.from_run_config({"client-data": "nowhere"})


@pytest.mark.slow  # a Ray simulation: minutes on 2 busy cores (`pytest -m slow`); run for issue 19 here
def test_secure_aggregation_round_completes_and_the_server_sees_only_the_average(tmp_path):
    from grp_workbench.federated.app import client_pool
    from grp_workbench.federated.attack import capture_ground_truth
    from grp_workbench.federated.simulate import simulate

    settings = FLSettings(num_server_rounds=1, batch_size=1, secagg=True, capture_clients="all",
                          output_dir=str(tmp_path))
    summary = simulate(settings, num_clients=3)
    assert summary["rounds"][0]["participants"] == 3 and len(summary["captures"]) == 1
    record = read_capture(summary["captures"][0])
    assert len(record["node_ids"]) == 3 and record["batch_size"] == 3  # one update of the union of 3 batches
    model = make_model(0)
    model.load_state_dict(record["global_weights"])
    data, _ = client_pool("mnist", "", 0)
    per_client = [batch_gradient(model, data.images[[i]], data.labels[[i]])
                  for i in (client_truth(dict(record, node_ids=None, node_id=n))["indices"][0]
                            for n in record["node_ids"])]
    for k, captured in enumerate(record["gradient"]):
        average = sum(g[k] for g in per_client) / 3
        assert torch.allclose(captured, average, atol=1e-4)  # SecAgg+ quantization: ~4e-5 measured
    images, _ = capture_ground_truth(record)
    assert images.shape == (3, 1, 28, 28)


def test_secagg_settings_are_checked_before_anything_starts():
    with pytest.raises(FederatedError, match="secagg_threshold=4"):
        FLSettings.from_run_config({"secagg": True, "secagg-threshold": 4, "secagg-shares": 3})
    with pytest.raises(FederatedError, match="not run under secagg"):
        FLSettings.from_run_config({"secagg": True, "defense": "soteria"})
