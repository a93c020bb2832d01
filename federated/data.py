"""Image data: the MNIST IDX files where the user points, or scikit-learn's digits as a fallback.

MNIST is never downloaded. ``load_mnist`` searches ``data_dir``, ``$WORKBENCH_DATA/mnist`` and
``../shared/datasets/mnist``; when none holds it, it warns and returns scikit-learn's bundled 8×8
digits (1,797 real images) upsampled to 28×28, so every command still runs offline.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from grp_workbench.federated import FederatedError
from grp_workbench.harness.data import find_dataset_dir

# The official split names; the 10k test split is what ../shared/datasets/mnist ships.
MNIST_FILES = {
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
}
IMAGE_SIZE = 28


@dataclass
class ImageDataset:
    images: torch.Tensor  # float32 (N, 1, 28, 28) in [0, 1]
    labels: torch.Tensor  # int64 (N,)
    source: str  # where it came from, recorded in reports

    def __len__(self) -> int:
        return len(self.labels)


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    """Read a gzipped IDX file (magic 0x0000 08 <dims>, big-endian sizes, uint8 payload)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise FederatedError(
            f"cannot read {path} ({err}); replace it with an intact copy (see its README md5)."
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != expected_dims:
        raise FederatedError(
            f"{path} is not an IDX file of unsigned bytes with {expected_dims} dimension(s); "
            "point --data-dir at the original MNIST .gz files."
        )
    shape = struct.unpack(f">{expected_dims}I", raw[4 : 4 + 4 * expected_dims])
    payload = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * expected_dims)
    if payload.size != int(np.prod(shape)):
        raise FederatedError(f"{path} declares shape {shape} but holds {payload.size} values; the file is truncated.")
    return payload.reshape(shape)


def read_mnist_split(folder: Path, split: str = "test") -> ImageDataset:
    image_file, label_file = (folder / name for name in MNIST_FILES[split])
    for file in (image_file, label_file):
        if not file.is_file():
            raise FederatedError(
                f"{folder} has no {file.name}; the MNIST {split} split needs {image_file.name} and "
                f"{label_file.name} there (the original gzipped IDX files)."
            )
    images = _read_idx(image_file, 3)
    labels = _read_idx(label_file, 1)
    if len(images) != len(labels):
        raise FederatedError(
            f"{image_file.name} has {len(images)} images but {label_file.name} has {len(labels)} labels."
        )
    if labels.max() > 9:
        raise FederatedError(f"{label_file} holds label {labels.max()}; MNIST labels are 0-9.")
    return ImageDataset(
        torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        f"MNIST {split} split ({len(labels)} images) from {folder}",
    )


def load_digits_as_mnist() -> ImageDataset:
    """scikit-learn's 1,797 8×8 digits (values 0-16), upsampled to MNIST's 28×28 in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    # 8 → 20 pixels plus a 4-pixel border mirrors MNIST's 20×20 digit box centred in 28×28.
    images = F.pad(F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False), (4, 4, 4, 4))
    return ImageDataset(images.clamp(0, 1), torch.from_numpy(digits.target.astype(np.int64)),
                        "scikit-learn digits (1,797 images, 8x8 upsampled to 28x28)")


def load_image_folder(folder: str | os.PathLike) -> ImageDataset:
    """Images in one subfolder per integer label (``0/``, ``1/``, ...), read as 28×28 grayscale in
    [0, 1] (PIL; resized when another size), for a client population from elsewhere."""
    from PIL import Image

    root = Path(folder)
    labelled = sorted((int(d.name), d) for d in root.iterdir() if d.is_dir() and d.name.isdigit()) \
        if root.is_dir() else []
    if not labelled:
        raise FederatedError(f"{root} has no label subfolders (0/, 1/, ...); put each class's images in one.")
    images, labels = [], []
    for label, sub in labelled:
        for path in sorted(p for p in sub.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")):
            with Image.open(path) as picture:
                gray = picture.convert("L").resize((28, 28))
            images.append(torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0))
            labels.append(label)
    if not images:
        raise FederatedError(f"{root}: the label subfolders hold no .png/.jpg/.bmp images.")
    return ImageDataset(torch.stack(images).unsqueeze(1), torch.tensor(labels), f"image folder {root} "
                        f"({len(images)} images)")


def load_mnist(data_dir: str | os.PathLike | None = None, split: str = "test") -> ImageDataset:
    folder = find_dataset_dir("mnist", data_dir)
    if folder is None:
        warnings.warn(
            "MNIST not found (set --data-dir or $WORKBENCH_DATA/mnist to the IDX .gz files); "
            "falling back to scikit-learn's digits.",
            stacklevel=2,
        )
        return load_digits_as_mnist()
    return read_mnist_split(folder, split)


def stratified_split(labels: torch.Tensor, holdout_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices) with every class in the same proportion in both."""
    if not 0.0 < holdout_fraction < 1.0:
        raise FederatedError(f"holdout_fraction={holdout_fraction} must lie strictly between 0 and 1.")
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train, held_out = train_test_split(index, test_size=holdout_fraction, random_state=seed,
                                       stratify=labels.numpy())
    return torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(held_out))
