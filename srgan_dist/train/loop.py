"""The Ray Train entry point: ``train_loop_per_worker(loop_config)`` runs one stage on a worker.

This file is the distributed seam: the only training code that talks to Ray. Ray Train starts
it on each worker with torch.distributed already initialised (NCCL on GPUs, gloo on CPUs); it
reads rank, world size and device from Ray, and hands the trainer a ``report`` that checkpoints
through ``ray.train.report`` (a barrier every rank calls). The trainer picks the checkpoint to
resume from itself (the stage's newest good ``step-*`` folder, not just the one
``ray.train.get_checkpoint()`` would hand over), so damaged or deleted checkpoints fall back.
Everything else happens in :class:`srgan_dist.train.trainer.StageTrainer`.

Errors a restart cannot fix: Ray Train 2.60 restarts the worker group on *any* worker error
until ``FailureConfig.max_failures`` is spent (``DefaultFailurePolicy`` has no non-retryable
worker error). A bad config, hand-off or set of checkpoints would fail the same way every time,
so those (``ValueError``s: ``ConfigError``, ``CheckpointError``) end the attempt normally on
every rank instead, and the rank that hit one writes it to ``<stage>/error.json``, which the
driver raises as a one-line ``RunError``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from srgan_dist.config import config_from_dict
from srgan_dist.rundir import RunDir
from srgan_dist.train.faults import FaultHooks
from srgan_dist.train.trainer import StageTrainer, all_reduce_sum


class WorkerFailed(RuntimeError):
    """A worker's training raised: says at which stage and step, for the driver's console (Ray
    Train adds the rank)."""


def report_to_ray(metrics: dict[str, Any], checkpoint_dir: Path | None, dir_name: str) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name)


def stop_without_restart(
    error: ValueError | None, run_dir: RunDir, stage: str, rank: int, device: torch.device
) -> bool:
    """True on every rank when any rank could not start; those ranks write why for the driver."""
    if error is not None:
        marker = run_dir.stage_error(stage)
        marker.parent.mkdir(parents=True, exist_ok=True)
        partial = marker.with_name(f"{marker.name}.rank{rank}")
        partial.write_text(json.dumps({"stage": stage, "rank": rank, "message": str(error)}) + "\n")
        os.replace(partial, marker)
        run_dir.push(marker)
    # Agreed by all ranks, so none goes on into DDP set-up waiting for one that stopped.
    failed_ranks = all_reduce_sum(torch.tensor([float(error is not None)]), device)
    return bool(failed_ranks.item() > 0)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train stage ``loop_config["stage"]`` on this worker (see ``StageTrainer``)."""
    context = ray.train.get_context()
    rank, device = context.get_world_rank(), ray.train.torch.get_device()
    run_dir, stage = RunDir.at(loop_config["run_dir"]), loop_config["stage"]
    # Ray registers a reported checkpoint when its controller next polls the workers (~2 s).
    wait = lambda: ray.train.get_all_reported_checkpoints(timeout_s=60)  # noqa: E731
    error: ValueError | None = None
    try:
        trainer = StageTrainer(
            config_from_dict(loop_config["config"]),
            stage,
            rank=rank,
            world_size=context.get_world_size(),
            device=device,
            run_dir=run_dir,
            train_files=loop_config["train_files"],
            val_files=loop_config["val_files"],
            report=report_to_ray,
            hooks=FaultHooks(loop_config.get("test_hooks") or {}, wait),
        )
        trainer.resume(loop_config.get("init_generator"))
    except ValueError as caught:  # config, hand-off or checkpoints: a restart would meet it again
        error = caught
    if stop_without_restart(error, run_dir, stage, rank, device):
        return
    try:
        trainer.run()
    except Exception as error:
        raise WorkerFailed(
            f"stage {trainer.stage}, after step {trainer.step}: {type(error).__name__}: {error}"
        ) from error
