"""Fault injection for the restart and non-finite tests: a fault plan named by the environment.

``SRGAN_TEST_FAULT_PLAN`` holds the path of a JSON file, the plan; every ``StageTrainer`` reads
it when it is made. Normal runs never set it, and a plan file that does not exist means no
faults. Ray workers inherit the environment of the process that started Ray, so the tests set
the variable before any Ray starts (``tests/conftest.py``) and write a plan for each run that
needs one; no production signature carries it.

A plan is ``{kind: {"stage": ..., "step": ..., "rank": optional}}`` with kinds
- ``nan``: the HR target of that step becomes NaN (a non-finite loss);
- ``die``: that rank's process exits after that step, once (``marker`` file = once); with
  ``truncate`` (a file path) it first cuts that file to half its size, e.g. the newest
  checkpoint's ``state.pt``: a checkpoint damaged while its worker dies.
- ``raise``: that rank raises ``RuntimeError`` after that step (a bug in training code);
- ``sync_debug``: ``{"from_step": N}``, steps N on of every stage run under
  ``torch.cuda.set_sync_debug_mode("error")`` on a GPU (a step that waits for the device raises;
  ``bench/gpu_check.py`` proves the steady state sync-free with it). Nothing on a CPU.
Before ``die`` and ``raise`` the worker waits until Ray Train has registered the checkpoint it
reported last, so the fault is a crash *between* checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

PLAN_ENV = "SRGAN_TEST_FAULT_PLAN"


@dataclass
class FaultPlan:
    faults: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_environment(cls) -> FaultPlan:
        """The plan in the file ``SRGAN_TEST_FAULT_PLAN`` names; no faults without one."""
        path = os.environ.get(PLAN_ENV)
        if not path or not Path(path).is_file():
            return cls()
        return cls(json.loads(Path(path).read_text()))

    def _fires(self, kind: str, stage: str, step: int, rank: int) -> bool:
        fault = self.faults.get(kind)
        return (
            bool(fault)
            and fault["stage"] == stage
            and fault["step"] == step
            and fault.get("rank", rank) == rank
        )

    def corrupt_target(self, stage: str, step: int, rank: int, hr: torch.Tensor) -> torch.Tensor:
        return hr * float("nan") if self._fires("nan", stage, step, rank) else hr

    @contextlib.contextmanager
    def step_guard(self, step: int, device: torch.device) -> Iterator[None]:
        """Step ``step`` runs in the block: under sync debug mode "error" when the plan asks."""
        fault = self.faults.get("sync_debug")
        if not fault or step < fault["from_step"] or device.type != "cuda":
            yield
            return
        before = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(before)

    def after_step(self, stage: str, step: int, rank: int) -> None:
        if self._fires("raise", stage, step, rank):
            _wait_for_checkpoints()
            raise RuntimeError(f"test hook: rank {rank} raises after {stage} step {step}")
        if not self._fires("die", stage, step, rank):
            return
        marker = Path(self.faults["die"]["marker"])
        if marker.exists():
            return
        _wait_for_checkpoints()
        if self.faults["die"].get("truncate"):
            victim = Path(self.faults["die"]["truncate"])
            os.truncate(victim, victim.stat().st_size // 2)
        marker.write_text(f"worker rank {rank} killed at {stage} step {step}\n")
        os._exit(1)


def _wait_for_checkpoints() -> None:
    """Ray Train registers a reported checkpoint when its controller next polls the workers."""
    import ray.train  # only ever in a Ray worker, and only when a test planned a crash

    ray.train.get_all_reported_checkpoints(timeout_s=60)
