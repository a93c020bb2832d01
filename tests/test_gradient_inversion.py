import math

import pytest
import torch

from federated.app import batch_gradient, make_model
from federated.attacks import dlg
from federated.attacks import inverting_gradients as ig
from federated.attacks.common import cosine_loss, dummy_gradient, infer_labels
from federated.data import load_mnist
from federated.metrics import match_order, psnr, reconstruction_metrics


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

    assert run(iterations=30)[2]["gradient_loss"] < 0.5 * run(iterations=0)[2]["gradient_loss"]
    reconstructed, labels, _ = run(iterations=30, infer_labels=True)
    assert labels.tolist() == label.tolist() and psnr(reconstructed, image).item() > 15
