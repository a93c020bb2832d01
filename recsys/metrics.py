"""Full-ranking accuracy (Recall@K, NDCG@K) and target-item promotion (T-HR@K, T-NDCG@K).

Both score every user against every item in batches and mask the items a user already has, so
that evaluating all 29,858 Gowalla users takes seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from grp_workbench.recsys.data import contains, interaction_keys


def mask_seen(scores: torch.Tensor, seen: sp.csr_matrix, rows: np.ndarray) -> None:
    """Set the scores of each row's seen items to -inf, in place, without densifying ``seen``."""
    sub = seen[rows]
    row_index = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))
    scores[torch.from_numpy(row_index).to(scores.device), torch.from_numpy(sub.indices).long().to(scores.device)] = (
        -torch.inf
    )


def _is_in(matrix: sp.csr_matrix, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Boolean (len(rows), k): whether ``items[r, c]`` is among the entries of row ``rows[r]``."""
    queries = np.arange(len(rows))[:, None] * matrix.shape[1] + items
    return contains(interaction_keys(matrix[rows]), queries)


@torch.no_grad()
def ranking_metrics(user_emb: torch.Tensor, item_emb: torch.Tensor, seen: sp.csr_matrix, truth: sp.csr_matrix,
                    users: np.ndarray | None = None, ks: tuple[int, ...] = (10, 20),
                    batch_size: int = 2048) -> dict[str, float]:
    """Mean Recall@k and NDCG@k over ``users`` that have at least one ``truth`` item.

    ``seen`` items (training, and validation when testing) are masked before ranking. NDCG's ideal
    DCG counts min(|truth_u|, k) hits, as LightGCN and VAT do.
    """
    candidates = np.arange(truth.shape[0]) if users is None else np.asarray(users)
    candidates = candidates[np.diff(truth.indptr)[candidates] > 0]
    k_max = max(ks)
    discounts = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64))
    sums = {f"{name}@{k}": 0.0 for k in ks for name in ("recall", "ndcg")}
    for start in range(0, len(candidates), batch_size):
        batch = candidates[start : start + batch_size]
        scores = user_emb[torch.from_numpy(batch).to(user_emb.device)] @ item_emb.T
        mask_seen(scores, seen, batch)
        top = scores.topk(min(k_max, scores.shape[1]), dim=1).indices.cpu().numpy()  # a catalogue under k: all
        hits = torch.from_numpy(_is_in(truth, batch, top)).double()
        hits = torch.nn.functional.pad(hits, (0, k_max - hits.shape[1]))
        n_relevant = torch.from_numpy(np.diff(truth.indptr)[batch]).double()
        for k in ks:
            sums[f"recall@{k}"] += (hits[:, :k].sum(1) / n_relevant).sum().item()
            ideal = torch.cumsum(discounts[:k], 0)[(n_relevant.clamp(max=k) - 1).long()]
            sums[f"ndcg@{k}"] += ((hits[:, :k] * discounts[:k]).sum(1) / ideal).sum().item()
    return {name: total / max(len(candidates), 1) for name, total in sums.items()}


@torch.no_grad()
def target_item_metrics(user_emb: torch.Tensor, item_emb: torch.Tensor, seen: sp.csr_matrix,
                        held_out: sp.csr_matrix, targets: np.ndarray, users: np.ndarray,
                        ks: tuple[int, ...] = (10, 20, 50), batch_size: int = 2048) -> dict[str, float]:
    """How far poisoning promoted each target item among real users who do not have it.

    For target t and user u with t in none of u's seen or held-out items, rank_u(t) is t's position
    in u's ranking of unseen items. T-HR@k = mean 1[rank ≤ k]; T-NDCG@k = mean 1[rank ≤ k] / log2(rank + 1);
    averaged per target, then over targets (VAT's eval_attacks). Only ranks up to max(ks) matter, so
    one top-k per user replaces a full sort.
    """
    targets = np.asarray(targets)
    k_max = max(ks)
    hit = np.zeros((len(ks), len(targets)))
    gain = np.zeros((len(ks), len(targets)))
    count = np.zeros(len(targets))
    has_target = (seen + held_out)[:, targets].toarray() > 0  # users × targets
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = user_emb[torch.from_numpy(batch).to(user_emb.device)] @ item_emb.T
        mask_seen(scores, seen, batch)
        top = scores.topk(min(k_max, scores.shape[1]), dim=1).indices.cpu().numpy()  # (B, k_max) or every item
        at = top[:, None, :] == targets[None, :, None]  # (B, T, k_max)
        ranks = np.where(at.any(2), at.argmax(2) + 1, k_max + 1)  # (B, T); k_max + 1 = "further down"
        eligible = ~has_target[batch]
        count += eligible.sum(0)
        for row, k in enumerate(ks):
            inside = eligible & (ranks <= k)
            hit[row] += inside.sum(0)
            gain[row] += np.where(inside, 1.0 / np.log2(ranks + 1), 0.0).sum(0)
    out = {}
    for row, k in enumerate(ks):
        out[f"t_hr@{k}"] = float(np.mean(hit[row] / np.maximum(count, 1)))
        out[f"t_ndcg@{k}"] = float(np.mean(gain[row] / np.maximum(count, 1)))
    return out
