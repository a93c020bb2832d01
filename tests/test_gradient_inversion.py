import math

import pytest
import torch

from grp_workbench.federated import FederatedError
from grp_workbench.federated.app import batch_gradient, make_model
from grp_workbench.federated.attacks import dlg
from grp_workbench.federated.attacks import inverting_gradients as ig
from grp_workbench.federated.attacks.common import cosine_loss, dummy_gradient, infer_labels
from grp_workbench.federated.data import load_mnist
from grp_workbench.federated.metrics import match_order, psnr, reconstruction_metrics


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(None, "test")


def _small_model():
    # the federated model itself: a narrower one leaks too little for a few-second test to succeed
    return make_model(0).eval()


def test_labels_are_read_off_the_last_layer_gradient(mnist):
    model = make_model(0).eval()
    for start in (0, 50, 100):
        picks = []
        for i in range(start, len(mnist)):  # four images with distinct labels
            if mnist.labels[i].item() not in [mnist.labels[j].item() for j in picks]:
                picks.append(i)
            if len(picks) == 4:
                break
        images, labels = mnist.images[picks], mnist.labels[picks]
        inferred = infer_labels(batch_gradient(model, images, labels), 4)
        assert sorted(inferred.tolist()) == sorted(labels.tolist())


def test_psnr_and_order_matching_by_hand():
    original = torch.zeros(2, 1, 4, 4)
    original[1] = 1.0
    reconstructed = torch.stack([original[1] - 0.1, original[0] + 0.1])  # swapped, each off by 0.1
    assert match_order(reconstructed, original).tolist() == [1, 0]
    assert psnr(reconstructed[[1, 0]], original).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)  # 10·log10(1/0.01)
    metrics = reconstruction_metrics(reconstructed, original, torch.tensor([3, 7]), torch.tensor([7, 3]))
    assert metrics["psnr"] == pytest.approx(20.0, abs=1e-4) and metrics["label_accuracy"] == 1.0

    class Constant(torch.nn.Module):  # always says "3": right on original[0] only, after order matching
        def forward(self, images):
            return torch.nn.functional.one_hot(torch.full((len(images),), 3), 10).float()

    scored = reconstruction_metrics(reconstructed, original, torch.tensor([3, 7]), torch.tensor([7, 3]), Constant())
    assert scored["classifier_accuracy"] == 0.5


def test_adaptive_attacker_clips_its_own_gradient(mnist):
    model = _small_model()
    defense = {"name": "clip", "clip_norm": 0.5, "prune_fraction": 0.2}
    gradient = dummy_gradient(model, mnist.images[:2], mnist.labels[:2], defense)
    assert math.sqrt(sum(g.pow(2).sum().item() for g in gradient)) <= 0.5 + 1e-5


def test_inverting_gradients_recovers_one_image(mnist):
    model = _small_model()
    image, label = mnist.images[:1], mnist.labels[:1]
    target = batch_gradient(model, image, label)
    start = psnr(torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)), image).item()
    reconstructed, labels, stats = ig.reconstruct(model, target, 1, (1, 28, 28), ig.InvertingGradientsConfig(
        iterations=150, restarts=1), torch.Generator().manual_seed(0))
    quality = reconstruction_metrics(reconstructed, image, label, labels)
    assert quality["label_accuracy"] == 1.0 and quality["psnr"] > max(start + 10, 20), (start, quality)
    assert stats["gradient_loss"] < cosine_loss(
        [g.detach() for g in dummy_gradient(model, torch.full_like(image, 0.5), label)], target).item()


def test_dlg_reduces_the_gradient_distance_and_idlg_recovers_the_image(mnist):
    model = _small_model()
    image, label = mnist.images[1:2], mnist.labels[1:2]
    target = batch_gradient(model, image, label)

    def run(**kwargs):
        return dlg.reconstruct(model, target, 1, (1, 28, 28), dlg.DLGConfig(**kwargs), torch.Generator().manual_seed(0))

    assert run(iterations=30, inner_iterations=1)[2]["gradient_loss"] < 0.5 * run(iterations=0)[2]["gradient_loss"]
    reconstructed, labels, _ = run(iterations=30, inner_iterations=1, infer_labels=True)
    assert labels.tolist() == label.tolist() and psnr(reconstructed, image).item() > 15
    diverged, _, stats = run(iterations=20, inner_iterations=1, lr=1e12)  # L-BFGS blows up: last finite iterate
    assert torch.isfinite(diverged).all() and stats["iterations"] < 20


def test_dlg_takes_the_originals_inner_lbfgs_iterations_unless_set(monkeypatch):
    built = []
    original = torch.optim.LBFGS

    def recording_lbfgs(*args, **kwargs):
        built.append(kwargs["max_iter"])
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "LBFGS", recording_lbfgs)
    model = _small_model()
    target = batch_gradient(model, torch.rand(1, 1, 28, 28), torch.tensor([3]))
    for config in (dlg.DLGConfig(iterations=1), dlg.DLGConfig(iterations=1, inner_iterations=5)):
        dlg.reconstruct(model, target, 1, (1, 28, 28), config, torch.Generator().manual_seed(0))
    assert built == [20, 5]  # torch's default, which mit-han-lab/dlg leaves unset


# ---- generative priors: GGL and GIFD -----------------------------------------------------------
def _contrasty_generator():
    """An untrained DCGAN generator whose output layer is scaled so that images differ across z."""
    from grp_workbench.federated.generative.dcgan import Generator

    torch.manual_seed(0)
    generator = Generator().eval().requires_grad_(False)
    generator.blocks[-1][0].weight.mul_(30)
    return generator


def _generated_target(generator):
    with torch.no_grad():
        image = generator(torch.randn(1, 100, generator=torch.Generator().manual_seed(1)))
        start = generator(torch.randn(1, 100, generator=torch.Generator().manual_seed(0)))
    return image, start


def test_l1_ball_projection_keeps_inside_points_and_lands_on_the_sphere():
    from grp_workbench.federated.attacks.gifd import project_onto_l1_ball

    x = torch.tensor([[0.2, -0.1, 0.0], [3.0, -1.0, 0.5]])
    projected = project_onto_l1_ball(x, 1.0)
    assert torch.equal(projected[0], x[0])
    assert projected[1].abs().sum().item() == pytest.approx(1.0, abs=1e-5)
    assert projected[1].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)  # soft threshold at θ = 2
    assert torch.allclose(project_onto_l1_ball(projected, 1.0), projected)


def test_gifd_feature_domains_match_the_gradient_better_than_the_latent_alone():
    from grp_workbench.federated.attacks import gifd

    generator, model = _contrasty_generator(), _small_model()
    image, start = _generated_target(generator)
    target = batch_gradient(model, image, torch.tensor([3]))
    config = gifd.GIFDConfig(steps_per_stage=40, restarts=1, last_stage=2)
    reconstructed, labels, info = gifd.reconstruct(model, target, 1, generator, config,
                                                   torch.Generator().manual_seed(0))
    stage_losses = [info[f"stage{s}_loss"] for s in range(3)]
    assert labels.tolist() == [3]
    assert info["gradient_loss"] == min(stage_losses) and info["chosen_stage"] == stage_losses.index(min(stage_losses))
    assert min(stage_losses[1:]) < stage_losses[0]  # searching features beats searching z alone
    assert psnr(reconstructed, image).item() > psnr(start, image).item() + 2


def test_gifd_chooses_by_the_gradient_cost_alone():
    from grp_workbench.federated.attacks import gifd

    generator, model = _contrasty_generator(), _small_model()
    image, _ = _generated_target(generator)
    target = batch_gradient(model, image, torch.tensor([3]))
    config = gifd.GIFDConfig(steps_per_stage=5, restarts=2, last_stage=1, tv_weight=10.0)  # a large TV term
    reconstructed, labels, info = gifd.reconstruct(model, target, 1, generator, config,
                                                   torch.Generator().manual_seed(0))
    cost = cosine_loss(dummy_gradient(model, reconstructed, labels, create_graph=False), target).item()
    assert info["gradient_loss"] == pytest.approx(cost, abs=1e-6)  # what was compared: no TV in it


def test_ggl_search_lowers_the_gradient_distance():
    from grp_workbench.federated.attacks import ggl
    from grp_workbench.federated.attacks.common import euclidean_loss

    generator, model = _contrasty_generator(), _small_model()
    image, start = _generated_target(generator)
    target = batch_gradient(model, image, torch.tensor([3]))
    start_distance = euclidean_loss(batch_gradient(model, start, torch.tensor([3])), target).item()
    _, _, info = ggl.reconstruct(model, target, 1, generator, ggl.GGLConfig(budget=8, num_sample=12, restarts=1),
                                 torch.Generator().manual_seed(0))
    assert info["gradient_loss"] < start_distance
    # population and restarts come from the config; the best of the restarts is kept
    _, _, more = ggl.reconstruct(model, target, 1, generator, ggl.GGLConfig(budget=8, num_sample=6, restarts=3),
                                 torch.Generator().manual_seed(0))
    assert more["iterations"] == 3 * 8 * 6 and more["gradient_loss"] < start_distance
    assert ggl.GGLConfig().restarts == 4 and ggl.GGLConfig().num_sample == 50  # GIFD's configs_biggan.yml


def test_dcgan_prior_trains_through_the_harness_and_loads(tmp_path):
    from grp_workbench.federated.generative.dcgan import OOD_CLASSES, SPEC, load_generator, prior_images
    from grp_workbench.harness.config import build_config
    from grp_workbench.harness.trainer import train

    config = build_config(SPEC.config_cls, SPEC.presets, "tiny", {"prior": "ood"})
    assert len(prior_images(config)) < 3000  # digits 0-4 of the 3,000 prior images only
    summary = train(SPEC, config, str(tmp_path / "prior"), "tiny", quiet=True)
    assert summary["status"] == "finished" and summary["final"]["coverage_mse"] > 0
    generator = load_generator(tmp_path / "prior")
    images = generator(torch.randn(2, 100))
    assert images.shape == (2, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert len(OOD_CLASSES) == 5
    with pytest.raises(Exception, match="train-prior"):
        load_generator(tmp_path / "missing")


def test_inverting_gradients_defaults_are_inversefeds():
    config = ig.InvertingGradientsConfig()
    assert (config.signed, config.init, config.lr, config.tv_weight) == (False, "randn", 0.1, 1e-4)
    with pytest.raises(FederatedError, match="init='zeros' must be randn"):
        ig.InvertingGradientsConfig(init="zeros")


def test_inverting_gradients_inverts_a_fedavg_update_through_the_local_steps(mnist):
    from grp_workbench.federated.attacks.common import simulated_update

    model = _small_model()
    image, label = mnist.images[:1], mnist.labels[:1]
    update = [u.detach() for u in simulated_update(model, image, label, local_steps=3, lr=0.1, create_graph=False)]
    start = psnr(torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)).clamp(0, 1), image).item()
    reconstructed, labels, stats = ig.reconstruct(model, update, 1, (1, 28, 28), ig.InvertingGradientsConfig(
        iterations=150, restarts=1), torch.Generator().manual_seed(0), local_steps=3, local_lr=0.1)
    quality = reconstruction_metrics(reconstructed, image, label, labels)
    assert quality["label_accuracy"] == 1.0 and quality["psnr"] > max(start + 10, 20), (start, quality)


def test_a_fedavg_capture_is_attacked_end_to_end(tmp_path, monkeypatch):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from grp_workbench.federated.app import CuriousFedAvg, FLSettings, client_app
    from grp_workbench.federated.attack import run_attack

    for key, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):  # what Flower's runtimes set
        monkeypatch.setattr(TaskIdentity, key, value)
    model = make_model(0)
    message = Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                          "config": ConfigRecord({"server-round": 1})}), dst_node_id=7,
                      message_type="train")
    # 3,000 partitions of the 6,000 client images: 2 images each, one full batch per local epoch
    run_config = {"mode": "fedavg", "local_epochs": 2, "batch_size": 2, "local_lr": 0.1, "capture_rounds": "1",
                  "output_dir": str(tmp_path)}
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 5, "num-partitions": 3000},
                      state=RecordDict(), run_config=run_config)
    reply = client_app(message, context)
    settings = FLSettings(**run_config)
    strategy = CuriousFedAvg(settings, tmp_path, min_train_nodes=1, min_available_nodes=1)
    strategy.sent[1] = model.state_dict()
    strategy.aggregate_train(1, [reply])
    result = run_attack("ig", strategy.captured[0], preset="tiny")
    assert result["images"].shape == result["originals"].shape == (2, 1, 28, 28)
    assert math.isfinite(result["metrics"]["psnr"]) and result["metrics"]["gradient_loss"] < 1.0
    with pytest.raises(FederatedError, match="only ig inverts one"):
        run_attack("dlg", strategy.captured[0], preset="tiny")


def test_the_benchmark_grid_maps_each_task_to_its_flower_simulation(tmp_path):
    """The cpu grid holds the headline, defense, FedAvg and stage-ablation cells, each task names the
    simulation its captures come from, and the tables and defense claim pick up whatever dp-eps<E>,
    secagg<k> and fedavg<L> were measured."""
    from grp_workbench.federated.benchmarks import (
        ALL_ATTACKS,
        GI_HEADLINE,
        _gi_cells,
        _gi_tables,
        _gifd_defense_claim,
        _simulation_settings,
    )
    from grp_workbench.harness.bench import BenchOptions

    cells = _gi_cells(BenchOptions(runs=str(tmp_path / "runs"), out=str(tmp_path / "out"), budget="cpu"))
    by_task = {}
    for cell in cells:
        by_task.setdefault(cell.task, []).append(cell)
    assert {c.method for c in by_task[GI_HEADLINE]} == set(ALL_ATTACKS)
    for task in ("smallcnn-bs1-untrained-indist-dp-eps8", "smallcnn-bs1-untrained-indist-secagg4",
                 "smallcnn-bs4-untrained-indist-none-fedavg5", "smallcnn-bs1-untrained-ood-none-stage1"):
        assert task in by_task, task
    assert {c.method for c in by_task["smallcnn-bs4-untrained-indist-none-fedavg5"]} == {"ig"}

    def settings(task):
        return _simulation_settings(by_task[task][0].config, tmp_path, 16)[0]

    dp = settings("smallcnn-bs1-untrained-indist-dp-eps8")
    assert (dp.defense, dp.dp_epsilon) == ("dp", 8.0)
    secagg = settings("smallcnn-bs1-untrained-indist-secagg4")
    assert secagg.secagg and secagg.defense == "none" and secagg.fraction_train == 4 / 40
    assert secagg.num_server_rounds == 16 and secagg.capture_rounds == ",".join(map(str, range(1, 17)))
    fedavg = settings("smallcnn-bs4-untrained-indist-none-fedavg5")
    assert (fedavg.mode, fedavg.local_epochs, fedavg.client_examples, fedavg.batch_size) == ("fedavg", 5, 4, 4)
    headline = settings(GI_HEADLINE)
    assert (headline.model, headline.num_server_rounds, headline.capture_rounds) == ("resnet", 20, "20")
    with pytest.raises(ValueError, match="untrained model only"):
        _simulation_settings(by_task[GI_HEADLINE][0].config | {"defense": "secagg4"}, tmp_path, 16)

    def record(method, task, seed, value):
        return {"method": method, "task": task, "seed": seed, "metrics": {"psnr": value}}

    psnr = {("ig", "none"): 40.0, ("gifd", "none"): 50.0, ("ig", "secagg3"): 20.0, ("gifd", "secagg3"): 15.0,
            ("ig", "dp-eps2"): 8.0, ("gifd", "dp-eps2"): 9.0, ("ig", "clip"): 10.0, ("gifd", "clip"): 30.0}
    records = [record(a, f"smallcnn-bs1-untrained-indist-{d}", s, v + s) for (a, d), v in psnr.items()
               for s in range(3)]
    records += [record("ig", "smallcnn-bs2-untrained-indist-none", s, 30.0) for s in range(3)]
    records += [record("ig", "smallcnn-bs2-untrained-indist-none-fedavg3", s, 25.0) for s in range(3)]
    tables = _gi_tables(records)
    assert "| method | none | clip | dp-eps2 | secagg3 |" in tables
    assert "FedAvg (3 local" in tables and "| method | bs 2 fedsgd | bs 2 fedavg3 |" in tables
    claim = _gifd_defense_claim(records)
    # a lead counts only where the CIs separate: clip (30 vs 10) yes, dp-eps2 (one dB apart, spread 2) no
    assert "under 1 of 3 defenses" in claim, claim
    assert "clip: gifd ahead, best IQM gifd 31.0 dB" in claim and "dp-eps2: gifd tied" in claim
    assert "secagg3: gifd behind, best IQM ig 21.0 dB, gifd 16.0" in claim
