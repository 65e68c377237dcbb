"""The Ray Train entry point: ``train_loop_per_worker(loop_config)`` runs one stage on a worker.

This file is the distributed seam: the only training code that talks to Ray. Ray Train starts
it on each worker with torch.distributed already initialised (NCCL on GPUs, gloo on CPUs); it
reads rank, world size, device and the stage's latest checkpoint from Ray, and hands the
trainer a ``report`` that checkpoints through ``ray.train.report`` (a barrier every rank calls).
Everything else happens in :class:`srgan_dist.train.trainer.StageTrainer`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch

from srgan_dist.config import config_from_dict
from srgan_dist.rundir import RunDir
from srgan_dist.train.faults import FaultHooks
from srgan_dist.train.trainer import StageTrainer


class WorkerFailed(RuntimeError):
    """A worker's training raised: says at which stage and step, for the driver's console (Ray
    Train adds the rank)."""


def report_to_ray(metrics: dict[str, Any], checkpoint_dir: Path | None, dir_name: str) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train stage ``loop_config["stage"]`` on this worker (see ``StageTrainer``)."""
    context = ray.train.get_context()
    # Ray registers a reported checkpoint when its controller next polls the workers (~2 s).
    wait = lambda: ray.train.get_all_reported_checkpoints(timeout_s=60)  # noqa: E731
    trainer = StageTrainer(
        config_from_dict(loop_config["config"]),
        loop_config["stage"],
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        run_dir=RunDir(Path(loop_config["run_dir"])),
        train_files=loop_config["train_files"],
        val_files=loop_config["val_files"],
        report=report_to_ray,
        hooks=FaultHooks(loop_config.get("test_hooks") or {}, wait),
    )
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as directory:
        trainer.restore(Path(directory) if directory else None, loop_config.get("init_generator"))
    try:
        trainer.run()
    except Exception as error:
        raise WorkerFailed(
            f"stage {trainer.stage}, after step {trainer.step}: {type(error).__name__}: {error}"
        ) from error
