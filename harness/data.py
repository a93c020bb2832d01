"""Finding datasets the project does not build, and resumable minibatch sampling.

Dataset lookup order: an explicit path (``--data-dir`` / a config field), then
``$WORKBENCH_DATA/<name>``, then ``../shared/datasets/<name>`` beside the repository (where the
tests and benchmarks of this project read their real data).

Things the project builds and reuses across runs (locally built offline-RL datasets, crafted
poisoning profiles) live under ``cache_dir()``: ``$WORKBENCH_CACHE``, else ``~/.cache/workbench``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from grp_workbench.harness.errors import HarnessError
from grp_workbench.harness.runs import storage_error

REPO_ROOT = Path(__file__).resolve().parent.parent


def find_dataset_dir(name: str, explicit: str | os.PathLike | None = None) -> Path | None:
    """The folder holding dataset ``name``, or ``None`` when none of the usual places has it.

    An explicit path that does not exist is an error, never a silent fallback.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise HarnessError(
                f"dataset path {path} for {name!r} does not exist. Point --data-dir (or data_dir=...) at the "
                f"folder that holds the {name} files, or leave it unset to search $WORKBENCH_DATA/{name}."
            )
        return path
    candidates = []
    if os.environ.get("WORKBENCH_DATA"):
        candidates.append(Path(os.environ["WORKBENCH_DATA"]).expanduser() / name)
    candidates.append(REPO_ROOT.parent / "shared" / "datasets" / name)
    return next((c for c in candidates if c.is_dir()), None)


def cache_dir(*parts: str) -> Path:
    """A folder under the project's cache (created), outside the repository and the run directories."""
    root = Path(os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench").expanduser()
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HarnessError(f"{storage_error(path, err, 'create the cache folder')} Or point $WORKBENCH_CACHE at a "
                           "writable folder.") from None
    return path


class EpochSampler:
    """Shuffled minibatch indices, epoch after epoch, from a private generator; resumable exactly.

    ``next()`` returns a LongTensor of ``batch_size`` indices into ``range(n)``. Each epoch is a fresh
    permutation; the last partial batch of an epoch is dropped so every step sees a full batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < batch_size:
            raise HarnessError(f"batch_size={batch_size} is larger than the {n} available examples; lower it.")
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self._position = 0, 0
        self._order = torch.randperm(n, generator=self.generator)

    def next(self) -> torch.Tensor:
        if self._position + self.batch_size > self.n:
            self.epoch += 1
            self._position = 0
            self._order = torch.randperm(self.n, generator=self.generator)
        batch = self._order[self._position : self._position + self.batch_size]
        self._position += self.batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "epoch": self.epoch, "position": self._position,
                "order": self._order.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.epoch, self._position, self._order = state["epoch"], state["position"], state["order"].clone()
