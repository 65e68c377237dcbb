"""The training window: the steps since the last log, validation or checkpoint, kept on the device.

Steps add their losses and their ``finite`` flag here without reading anything back to the
host; the trainer reads the window once at its end (:meth:`StepWindow.take_nonfinite`,
:meth:`StepWindow.scalars`), so the steady state never waits on the GPU. Losses are averaged
over the window's finite steps only. The window also keeps the stage's count of skipped
non-finite steps (checkpointed) and applies ``train.on_nonfinite`` / ``max_nonfinite_skips``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from srgan_dist.config import TrainConfig


@dataclass(frozen=True)
class NonFinite:
    """Non-finite steps found at a window's end."""

    first_step: int
    """The window's first step whose gradients were not finite."""
    stops: bool
    """The stage stops (``on_nonfinite=error``, or more skips than ``max_nonfinite_skips``)."""


class StepWindow:
    """Device-side sums of one window's steps, and the stage's non-finite skip count."""

    def __init__(self, device: torch.device, policy: TrainConfig) -> None:
        self.device, self.policy = device, policy
        self.skips = 0
        """Steps of this stage whose update was skipped for a non-finite gradient."""
        self.reset()

    def reset(self) -> None:
        """Start a new window (and a new peak of the GPU memory the window reports)."""
        self.sums: dict[str, torch.Tensor] = {}
        self.good = torch.zeros((), device=self.device)
        self.bad = torch.zeros((), device=self.device)
        self.first_bad = torch.zeros((), dtype=torch.long, device=self.device)
        self.steps, self.data_s, self.start = 0, 0.0, time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def add(self, step: int, values: dict[str, torch.Tensor], finite: torch.Tensor, data_s: float) -> None:
        """Fold in step ``step``'s losses (kept only when ``finite`` is 1) without a host sync."""
        finite = finite.to(self.device).float()
        good = finite > 0
        for key, value in values.items():
            value = value.detach().float().to(self.device)
            total = self.sums.get(key, torch.zeros((), device=self.device))
            self.sums[key] = total + torch.where(good, value, torch.zeros_like(value))
        self.good += finite
        self.bad += 1 - finite
        first_unset = (self.first_bad == 0) & ~good
        self.first_bad = torch.where(first_unset, step, self.first_bad)
        self.steps += 1
        self.data_s += data_s

    def take_nonfinite(self) -> NonFinite | None:
        """Read the window's non-finite steps (one sync); count them as skipped and clear them."""
        bad = int(self.bad)
        if bad == 0:
            return None
        first_bad = int(self.first_bad)
        self.bad.zero_()
        self.first_bad.zero_()
        self.skips += bad
        stops = self.policy.on_nonfinite == "error" or self.skips > self.policy.max_nonfinite_skips
        return NonFinite(first_bad, stops)

    def scalars(
        self, samples_per_step: int, reduce: Callable[[torch.Tensor], torch.Tensor]
    ) -> dict[str, float]:
        """Mean losses over the finite steps of all ranks (``reduce`` sums over ranks), speed,
        data wait, skips so far and, on a GPU, memory."""
        keys = sorted(self.sums)
        local = torch.stack([*(self.sums[k] for k in keys), self.good]).double().cpu()
        reduced = reduce(local)
        good_steps = float(reduced[-1])  # a window of skipped steps only has no losses to show
        scalars = (
            {k: float(v) / good_steps for k, v in zip(keys, reduced[:-1], strict=True)} if good_steps else {}
        )
        elapsed = time.perf_counter() - self.start
        scalars["perf/samples_per_s"] = self.steps * samples_per_step / elapsed
        scalars["perf/data_wait_fraction"] = self.data_s / elapsed
        scalars["train/nonfinite_skips"] = self.skips
        if self.device.type == "cuda":
            # The window's peak of torch's allocator, and the whole device's use (DALI's pools,
            # NCCL and the CUDA context included), which is what runs out first.
            scalars["perf/gpu_max_memory_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            free, total = torch.cuda.mem_get_info(self.device)
            scalars["perf/gpu_used_memory_mib"] = (total - free) / 2**20
        return scalars
