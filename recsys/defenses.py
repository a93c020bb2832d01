"""Adversarial training against poisoning: APR (uniform radius) and VAT (vulnerability-aware radius).

Both add, from epoch ``begin_adv`` on, a BPR loss on embeddings moved by one normalized-gradient step
(FGSM-style) of the clean BPR loss:

    Δ_x = ρ · s_k · ∇_x L / ‖∇_x L‖₂   for x ∈ {user, positive item, negative item} of sample k

with s_k = 1 for APR (He et al., SIGIR 2018) and s_k = g(L_u) for VAT (Zhang et al., RecSys 2024):

    g(L_u) = λ · σ(mean_v L_v / L_u − 1),  L_u = sum of user u's per-sample BPR losses in the batch

so users the model already fits well (low loss, the most vulnerable to poisoning) get larger
radii. The gradients are taken without a graph through themselves, so Δ acts as a constant
(as both official implementations effectively do; ``torch.autograd.grad`` without create_graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grp_workbench.recsys.models import bpr_loss


def vulnerability_scale(users: torch.Tensor, per_sample_loss: torch.Tensor, user_lambda: float = 2.0) -> torch.Tensor:
    """g(L_u) for each sample's user: λ·σ(mean_loss / L_u − 1), with mean over the batch's distinct users."""
    unique, inverse = torch.unique(users, return_inverse=True)
    user_loss = torch.zeros(len(unique), dtype=per_sample_loss.dtype, device=per_sample_loss.device)
    user_loss.index_add_(0, inverse, per_sample_loss.detach())
    scale = user_lambda * torch.sigmoid(user_loss.mean() / (user_loss + 1e-9) - 1)
    return scale[inverse]


def adversarial_bpr(u: torch.Tensor, i: torch.Tensor, j: torch.Tensor, per_sample_loss: torch.Tensor, eps: float,
                    radius_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample BPR loss at the perturbed embeddings u + Δu, i + Δi, j + Δj."""
    grads = torch.autograd.grad(per_sample_loss.mean(), (u, i, j), retain_graph=True)
    radius = eps if radius_scale is None else eps * radius_scale.unsqueeze(1)
    du, di, dj = (F.normalize(g, p=2, dim=1) * radius for g in grads)
    return bpr_loss(((u + du) * (i + di)).sum(1), ((u + du) * (j + dj)).sum(1))
