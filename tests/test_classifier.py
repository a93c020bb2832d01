import gzip

import pytest
import torch

from grp_workbench.federated import FederatedError
from grp_workbench.federated.classifier import PRESETS, SPEC, ClassifierConfig, ImageClassifier, random_shift
from grp_workbench.federated.data import load_mnist, read_mnist_split, stratified_split
from grp_workbench.harness.config import build_config
from grp_workbench.harness.data import find_dataset_dir
from grp_workbench.harness.errors import WorkbenchError
from grp_workbench.harness.trainer import train
from tests.conftest import metric_rows

MNIST = find_dataset_dir("mnist")
needs_mnist = pytest.mark.skipif(MNIST is None, reason="../shared/datasets/mnist is not beside this checkout")


@needs_mnist
def test_reads_the_official_mnist_test_split():
    data = read_mnist_split(MNIST)
    assert data.images.shape == (10_000, 1, 28, 28) and data.images.dtype == torch.float32
    assert 0.0 == data.images.min() and data.images.max() == 1.0
    assert torch.bincount(data.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@needs_mnist
def test_holdout_split_is_stratified_fixed_and_disjoint():
    labels = read_mnist_split(MNIST).labels
    train_idx, held_idx = stratified_split(labels, 0.2, seed=0)
    assert len(held_idx) == 2_000 and len(train_idx) == 8_000
    assert not set(train_idx.tolist()) & set(held_idx.tolist())
    assert torch.equal(held_idx, stratified_split(labels, 0.2, seed=0)[1])
    fractions = torch.bincount(labels[held_idx]) / torch.bincount(labels)
    assert torch.allclose(fractions, torch.full((10,), 0.2), atol=0.01)


def test_corrupt_idx_file_names_the_file(tmp_path):
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 100)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x00" * 5)
    with pytest.raises(FederatedError, match="t10k-images-idx3-ubyte.gz declares shape .* truncated"):
        read_mnist_split(tmp_path)


def test_folder_without_mnist_files_says_which_files_are_needed(tmp_path):
    with pytest.raises(FederatedError, match="has no t10k-images-idx3-ubyte.gz"):
        read_mnist_split(tmp_path)


def test_missing_explicit_dataset_path_is_a_clear_error(tmp_path):
    with pytest.raises(WorkbenchError, match="does not exist. Point --data-dir"):
        load_mnist(tmp_path / "nowhere")


def test_falls_back_to_sklearn_digits_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr("grp_workbench.harness.data.REPO_ROOT", tmp_path / "repo")
    monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    with pytest.warns(UserWarning, match="falling back to scikit-learn's digits"):
        data = load_mnist()
    assert data.images.shape == (1797, 1, 28, 28) and "digits" in data.source
    assert SPEC.task(ClassifierConfig()) == "digits"


def test_random_shift_moves_pixels_by_integer_offsets():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10, 12] = 1.0
    shifted = random_shift(image.repeat(64, 1, 1, 1), 2, torch.Generator().manual_seed(0))
    rows, cols = torch.nonzero(shifted[:, 0], as_tuple=True)[1:]
    assert shifted.sum() == 64  # nothing lost or blurred
    assert set(rows.tolist()) <= set(range(8, 13)) and set(cols.tolist()) <= set(range(10, 15))
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 5
    assert torch.equal(random_shift(image, 0, torch.Generator()), image)


def _tiny(**overrides) -> ClassifierConfig:
    return build_config(ClassifierConfig, PRESETS, "tiny", {"deterministic": True, **overrides})


def test_tiny_training_beats_chance_by_far(tmp_path):
    summary = train(SPEC, _tiny(), tmp_path / "run", "tiny", quiet=True)
    assert summary["final"]["accuracy"] > 0.5  # chance is 0.1; 40 steps of 32 images reach ~0.8


def test_classifier_resume_after_crash_matches_uninterrupted_run(tmp_path, monkeypatch):
    train(SPEC, _tiny(), tmp_path / "full", "tiny", quiet=True)
    original = ImageClassifier.update
    calls = {"n": 0}

    def crash_at_step_30(self):
        calls["n"] += 1
        if calls["n"] == 30:
            raise RuntimeError("simulated kill")
        return original(self)

    monkeypatch.setattr(ImageClassifier, "update", crash_at_step_30)
    with pytest.raises(RuntimeError):
        train(SPEC, _tiny(), tmp_path / "crashed", "tiny", quiet=True)
    monkeypatch.setattr(ImageClassifier, "update", original)
    resumed = train(SPEC, _tiny(), tmp_path / "crashed", "tiny", if_exists="resume", quiet=True)
    assert resumed["resumed_from"] == [20]
    assert metric_rows(tmp_path / "crashed") == metric_rows(tmp_path / "full")
