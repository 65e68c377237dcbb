"""Exponential moving average of the generator weights (``train.ema_decay``).

As in BasicSR, Real-ESRGAN and other SR trainers, validation scores and stage exports use the
EMA of G, while the raw weights keep training. The decay is warmed up

    decay_t = min(decay, (1 + t) / (10 + t)),   t = updates so far,

so a short run is not dragged toward its random start (decay_0 = 0.1, 0.9 at t = 80, 0.999
reached after ~9,000 updates). Only parameters are averaged; BatchNorm running statistics are
copied from the raw generator at every update (as ``AveragedModel(use_buffers=False)`` does).

``torch.optim.swa_utils.AveragedModel`` is not used because it reads its ``n_averaged`` counter
on the host at every update, which is a device synchronisation per training step on a GPU; here
the counter is a Python int and the update is one ``_foreach_lerp_`` (what torch's own
``get_ema_multi_avg_fn`` runs).

Every rank keeps its own EMA: DDP keeps G identical on all ranks, so the EMAs stay identical
without a collective, and each rank restores its EMA from the checkpoint on resume.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from srgan_dist.config import ConfigError


def warmed_up_decay(decay: float, updates_so_far: int) -> float:
    """The decay applied at an update after ``updates_so_far`` earlier ones."""
    return min(decay, (1 + updates_so_far) / (10 + updates_so_far))


class GeneratorEMA:
    """The EMA copy of a generator; ``module`` is a plain ``nn.Module`` in eval mode."""

    def __init__(self, generator: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in (0, 1) to keep an EMA, got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(generator).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, generator: nn.Module) -> None:
        """Fold the current weights of ``generator`` (unwrapped, same architecture) into the average."""
        weight = 1.0 - warmed_up_decay(self.decay, self.updates)
        torch._foreach_lerp_(
            list(self.module.parameters()), [p.detach() for p in generator.parameters()], weight
        )
        for ema_buffer, buffer in zip(self.module.buffers(), generator.buffers(), strict=True):
            ema_buffer.copy_(buffer)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
