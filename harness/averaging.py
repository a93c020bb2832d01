"""Exponential moving averages of a network's weights, shared by every method that samples or
evaluates an averaged copy (the DDPM teacher, SFD's generator, its multi-step peers).

Built on ``torch.optim.swa_utils.AveragedModel``. ``warmup`` ramps the decay as
``min(decay, (1 + n) / (10 + n))`` after n updates (the num_updates rule of TensorFlow's
``ExponentialMovingAverage``): a plain EMA that starts from a network's random initialisation keeps
``decay ** n`` of it (0.999 ** 1000 = 37%), so a short CPU run would be evaluated on weights that are
still a third noise; the ramp forgets the initialisation within the first hundred updates and reaches
the plain decay after ``(10 decay - 1) / (1 - decay)`` updates (8,990 for 0.999). Without ``warmup``
the average is the plain one, as when a copy starts from a trained network (it should stay near it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def warmup_decay(decay: float, updates: int) -> float:
    """The decay applied at the update after ``updates`` earlier ones."""
    return min(decay, (1 + updates) / (10 + updates))


def exponential_average(module: nn.Module, decay: float, warmup: bool = False) -> AveragedModel:
    """An ``AveragedModel`` (buffers averaged too) of ``module`` with decay ``decay``; see the module
    docstring for ``warmup``. Its state_dict holds the update count, so a resumed run continues the ramp."""
    if not 0 < decay < 1:
        raise ValueError(f"EMA decay={decay} must lie in (0, 1).")
    if not warmup:
        return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @torch.no_grad()
    def ramped(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not (torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0])):
            torch._foreach_copy_(averaged, current)  # counters and other integer buffers follow the network
            return
        torch._foreach_lerp_(averaged, current, 1 - warmup_decay(decay, int(num_averaged)))

    return AveragedModel(module, multi_avg_fn=ramped, use_buffers=True)
