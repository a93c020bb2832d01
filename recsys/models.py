"""MF and LightGCN with the BPR loss.

Both expose ``forward(users, pos, neg) -> (u, i, j, reg)``: the final representations the scores
use and the L2 term over the ego (layer-0) embeddings, as in the VAT code; and
``all_embeddings()`` for full-ranking evaluation.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Per-sample BPR, -log σ(s⁺ - s⁻) = softplus(s⁻ - s⁺)."""
    return F.softplus(neg_scores - pos_scores)


class MF(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int = 64, init_std: float = 0.1):
        super().__init__()
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user_embedding.weight, std=init_std)
        nn.init.normal_(self.item_embedding.weight, std=init_std)

    def all_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding.weight, self.item_embedding.weight

    def ego_regularizer(self, users, pos, neg) -> torch.Tensor:
        """mean‖u‖² + mean‖i⁺‖² + mean‖i⁻‖² over the ego embeddings of the batch."""
        u, i, j = self.user_embedding(users), self.item_embedding(pos), self.item_embedding(neg)
        return u.pow(2).sum(1).mean() + i.pow(2).sum(1).mean() + j.pow(2).sum(1).mean()

    def forward(self, users, pos, neg):
        user_all, item_all = self.all_embeddings()
        return user_all[users], item_all[pos], item_all[neg], self.ego_regularizer(users, pos, neg)


def normalized_adjacency(train: sp.csr_matrix) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the user-item bipartite graph, as a sparse CSR tensor ((U+I) × (U+I))."""
    n_users, n_items = train.shape
    r = train.tocoo()
    rows = np.concatenate([r.row, r.col + n_users])
    cols = np.concatenate([r.col + n_users, r.row])
    adjacency = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                              shape=(n_users + n_items, n_users + n_items))
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    norm = sp.diags(inv_sqrt) @ adjacency @ sp.diags(inv_sqrt)
    norm = norm.tocsr().astype(np.float32)
    norm.sort_indices()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is the fast CPU path here
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(norm.indptr).long(), torch.from_numpy(norm.indices).long(),
                                       torch.from_numpy(norm.data), size=norm.shape)


class SymmetricSparseMatmul(torch.autograd.Function):
    """``A @ X`` for a symmetric sparse ``A``, whose gradient ``Aᵀ @ G`` is then ``A @ G``.

    Autograd's own backward of a CSR product transposes ``A`` on every call: 3x the forward's cost
    on a CPU and far worse on a GPU. The normalized adjacency is symmetric by construction.
    """

    @staticmethod
    def forward(ctx, adjacency: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.adjacency = adjacency
        return adjacency @ dense

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, ctx.adjacency @ grad


class LightGCN(MF):
    """E = mean(E⁰, ÂE⁰, ..., Â^K E⁰) with Â the normalized adjacency of the (poisoned) training graph."""

    def __init__(self, n_users: int, n_items: int, adjacency: torch.Tensor, dim: int = 64, n_layers: int = 3,
                 init_std: float = 0.1):
        super().__init__(n_users, n_items, dim, init_std)
        self.n_layers = n_layers
        self.register_buffer("adjacency", adjacency, persistent=False)

    def all_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        layers, current = [ego], ego
        for _ in range(self.n_layers):
            current = SymmetricSparseMatmul.apply(self.adjacency, current)
            layers.append(current)
        final = torch.stack(layers).mean(0)
        return final[: self.user_embedding.num_embeddings], final[self.user_embedding.num_embeddings :]
