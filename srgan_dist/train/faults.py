"""Fault injection for the restart and non-finite tests (``loop_config["test_hooks"]``).

Never set in normal runs: ``FaultHooks()`` with no hooks does nothing. A hook is
``{"stage": ..., "step": ..., "rank": optional}``:
- ``nan``: the HR target of that step becomes NaN (a non-finite loss);
- ``die``: that rank's process exits after that step, once (``marker`` file = once); with
  ``truncate`` (a file path) it first cuts that file to half its size, e.g. the newest
  checkpoint's ``state.pt``: a checkpoint damaged while its worker dies.
- ``raise``: that rank raises ``RuntimeError`` after that step (a bug in training code), once
  the checkpoint reported last is registered.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class FaultHooks:
    hooks: dict[str, Any] = field(default_factory=dict)
    wait_for_checkpoints: Callable[[], None] = lambda: None
    """Called before dying: lets the checkpoint reported last be registered, so the death is
    a crash *between* checkpoints."""

    def _fires(self, name: str, stage: str, step: int, rank: int) -> bool:
        hook = self.hooks.get(name)
        return (
            bool(hook) and hook["stage"] == stage and hook["step"] == step and hook.get("rank", rank) == rank
        )

    def corrupt_target(self, stage: str, step: int, rank: int, hr: torch.Tensor) -> torch.Tensor:
        return hr * float("nan") if self._fires("nan", stage, step, rank) else hr

    def after_step(self, stage: str, step: int, rank: int) -> None:
        if self._fires("raise", stage, step, rank):
            self.wait_for_checkpoints()
            raise RuntimeError(f"test hook: rank {rank} raises after {stage} step {step}")
        if not self._fires("die", stage, step, rank):
            return
        marker = Path(self.hooks["die"]["marker"])
        if marker.exists():
            return
        self.wait_for_checkpoints()
        if self.hooks["die"].get("truncate"):
            victim = Path(self.hooks["die"]["truncate"])
            os.truncate(victim, victim.stat().st_size // 2)
        marker.write_text(f"worker rank {rank} killed at {stage} step {step}\n")
        os._exit(1)
