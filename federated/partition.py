"""Who holds which images in a federated simulation.

The 10k MNIST images are split once, stratified and seeded, into three disjoint roles:

* ``server_test`` (1,000): the server's held-out set for global accuracy;
* ``prior`` (3,000): images no client holds, for training the attacker's generative prior (the
  in-distribution case of GIFD; the out-of-distribution case uses digits 0–4 of it);
* ``clients`` (6,000): partitioned across the N clients, IID or by a Dirichlet(α) label skew.
"""

from __future__ import annotations

import numpy as np
import torch

from grp_workbench.federated import FederatedError

ROLE_SIZES = {"server_test": 1000, "prior": 3000}


def assign_roles(labels: torch.Tensor, seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint, stratified index sets {"server_test", "prior", "clients"} over ``labels``."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    y = labels.numpy()
    needed = sum(ROLE_SIZES.values())
    if len(index) <= needed:
        raise FederatedError(f"{len(index)} images cannot fill the roles ({needed} + clients); use full MNIST.")
    rest, server_test = train_test_split(index, test_size=ROLE_SIZES["server_test"], random_state=seed, stratify=y)
    clients, prior = train_test_split(rest, test_size=ROLE_SIZES["prior"], random_state=seed + 1, stratify=y[rest])
    return {"server_test": np.sort(server_test), "prior": np.sort(prior), "clients": np.sort(clients)}


def iid_partition(n_items: int, n_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle and deal ``n_items`` positions into ``n_clients`` nearly equal parts."""
    if not 1 <= n_clients <= n_items:
        raise FederatedError(f"num-partitions={n_clients} must lie between 1 and the {n_items} client images.")
    order = np.random.default_rng(seed).permutation(n_items)
    return [np.sort(part) for part in np.array_split(order, n_clients)]


def dirichlet_partition(labels: np.ndarray, n_clients: int, alpha: float, seed: int,
                        min_size: int = 2) -> list[np.ndarray]:
    """Label-skewed parts: for each class, its items go to clients in Dirichlet(α) proportions.

    Small α gives clients few classes; resampled until every client holds at least ``min_size``.
    """
    if alpha <= 0:
        raise FederatedError(f"dirichlet-alpha={alpha} must be > 0 (smaller = more skewed, e.g. 0.5).")
    if n_clients * min_size > len(labels):
        raise FederatedError(f"{len(labels)} images cannot give {n_clients} clients {min_size} each.")
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for cls in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise FederatedError(f"no Dirichlet({alpha}) draw gave every one of {n_clients} clients {min_size} images; "
                         "raise dirichlet-alpha or lower num-partitions.")


def client_batch(indices: np.ndarray, batch_size: int, server_round: int, partition_id: int,
                 seed: int) -> np.ndarray:
    """The FedSGD batch a client uses in a round: deterministic, so an evaluator can recompute the
    ground truth of a captured update without the client ever sending it."""
    rng = np.random.default_rng([seed, server_round, partition_id])
    return np.sort(rng.choice(indices, size=min(batch_size, len(indices)), replace=False))
