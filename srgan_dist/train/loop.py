"""The Ray Train entry point: ``train_loop_per_worker(loop_config)`` runs every stage on a worker.

This file is the distributed seam: the only training code that talks to Ray. Ray Train starts
it on each worker with torch.distributed already initialised (NCCL on GPUs, gloo on CPUs); it
reads rank, world size and device from Ray, and hands the trainer a ``report`` that checkpoints
through ``ray.train.report`` (a barrier every rank calls).

One worker group trains all stages of a run, so the second stage does not pay for a new Ray
Train controller and worker group. Per stage, in order: a ``StageTrainer`` trains it (resuming
from its newest good checkpoint), then rank 0 writes ``generator_<stage>.safetensors`` and the
stage's ``summary.json`` entry and prints the stage's console lines, and every rank waits for
that before the next stage loads the generator. Stages finished before (``run_record.first_unfinished_stage``)
are skipped, so a restarted worker group resumes the stage it was in.

The trainer picks the checkpoint to resume from itself (the stage's newest good ``step-*``
folder, not just the one ``ray.train.get_checkpoint()`` would hand over), so damaged or deleted
checkpoints fall back.
Everything else happens in :class:`srgan_dist.train.trainer.StageTrainer`.

Errors a restart cannot fix: Ray Train 2.60 restarts the worker group on *any* worker error
until ``FailureConfig.max_failures`` is spent (``DefaultFailurePolicy`` has no non-retryable
worker error). A bad config, hand-off or set of checkpoints would fail the same way every time,
so those (a ``UserError``: ``ConfigError``, ``CheckpointError``) end the attempt normally on
every rank instead, and the rank that hit one writes it to ``<stage>/error.json``
(``run_record.StageStartError``), which the driver raises as a one-line ``RunError``.
"""

from __future__ import annotations

import functools
import gc
import time
from typing import Any

import ray.train
import ray.train.torch
import torch

from srgan_dist.config import Config, config_from_dict
from srgan_dist.errors import UserError
from srgan_dist.monitor import console_logger
from srgan_dist.run_record import (
    StageRecord,
    StageStartError,
    done_line,
    record_stage,
    unfinished_stages,
    write_stop,
)
from srgan_dist.rundir import RunDir
from srgan_dist.train.checkpoint import CheckpointUpload
from srgan_dist.train.trainer import StageTrainer, all_reduce_sum


class WorkerFailed(RuntimeError):
    """A worker's training raised: says at which stage and step, for the driver's console (Ray
    Train adds the rank)."""


def report_to_ray(
    stage_folder: str, metrics: dict[str, Any], dir_name: str, upload: CheckpointUpload | None
) -> None:
    """``ray.train.report``; rank 0's checkpoint lands in ``<run>/<stage_folder>/<dir_name>`` (Ray
    Train's run folder is the run directory, see ``driver.fit_stages``).

    Ray Train 2.60's ``report`` first agrees on the folder name with every rank (a barrier), then
    hands the checkpoint to ``checkpoint_upload_fn``: in the training thread (SYNC), or on its
    one upload thread in report order (ASYNC; the local folder must outlive ``report``, which is
    why ``upload.persist`` removes it, not Ray). The worker's training function returns only
    after that thread is done, and an upload that fails fails the worker. The copy is ours, not
    Ray Train's default one (``pyarrow.fs.copy_files`` of the folder, in no set order), so the
    manifest is stored last and pruning follows it (``checkpoint.StageCheckpoints``).
    """
    checkpoint_dir_name = f"{stage_folder}/{dir_name}"
    if upload is None:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=checkpoint_dir_name)
        return
    storage = ray.train.get_context().get_storage()

    def persist(checkpoint: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
        # Ray Train's own upload starts with this check: a local storage path that this node
        # does not share with the driver's fails here, not after a run of unreachable checkpoints.
        storage._check_validation_file()
        upload.persist()
        path = storage.build_checkpoint_path_from_name(name)
        return ray.train.Checkpoint(filesystem=storage.storage_filesystem, path=path)

    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint.from_directory(upload.staging),
        checkpoint_dir_name=checkpoint_dir_name,
        checkpoint_upload_mode=(
            ray.train.CheckpointUploadMode.ASYNC if upload.background else ray.train.CheckpointUploadMode.SYNC
        ),
        delete_local_checkpoint_after_upload=False,
        checkpoint_upload_fn=persist,
    )


def preemption_notice() -> str | None:
    """Whether Ray Core is draining a node of this run (a spot reclaim), as one line, else None.

    ``ray.train.get_preemption_info`` is a barrier: every rank calls it at the same steps, and all
    get rank 0's answer. Ray Train's ``PreemptionWatcher`` polls Ray Core's draining nodes every
    ``RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S`` (5 s) and tells every worker; the answer stays until
    the worker group restarts.
    """
    info = ray.train.get_preemption_info()
    if info is None:
        return None
    nodes = ", ".join(node[:8] for node in info.preempted_node_ids)
    deadline = ""
    if info.deadline_ms is not None:
        deadline = f", reclaimed in {max(0.0, info.deadline_ms / 1000 - time.time()):.0f} s"
    return f"node(s) {nodes} (rank(s) {', '.join(map(str, info.preempted_ranks))}) being preempted{deadline}"


def stop_without_restart(
    error: UserError | None, run_dir: RunDir, stage: str, rank: int, device: torch.device
) -> bool:
    """True on every rank when any rank could not start; those ranks write why for the driver."""
    if error is not None:
        write_stop(run_dir, StageStartError(stage=stage, rank=rank, message=str(error)))
    # Agreed by all ranks, so none goes on into DDP set-up waiting for one that stopped.
    failed_ranks = all_reduce_sum(torch.tensor([float(error is not None)]), device)
    return bool(failed_ranks.item() > 0)


def first_stage_to_train(cfg: Config, run_dir: RunDir, rank: int, device: torch.device) -> int:
    """Index in ``train.stages`` of the first stage not finished, as rank 0 sees it: every rank
    starts there, even when a shared mount shows the others an older ``summary.json``."""
    index = 0
    if rank == 0:
        index = len(cfg.train.stages) - len(unfinished_stages(run_dir, cfg.train.stages))
    return int(all_reduce_sum(torch.tensor([float(index)]), device).item())


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train every stage of the run not finished yet, in order, on this worker.

    A restarted worker group (``train.max_failures``, a lost node in an elastic run) starts
    here again: finished stages are skipped and the interrupted one resumes from its newest
    good checkpoint.
    """
    context = ray.train.get_context()
    rank, device = context.get_world_rank(), ray.train.torch.get_device()
    cfg = config_from_dict(loop_config["config"])
    run_dir = RunDir.at(loop_config["run_dir"])
    stages = cfg.train.stages
    first = first_stage_to_train(cfg, run_dir, rank, device)
    # The previous stage's generator, as every rank can read it (its URI for cloud storage).
    handoff = lambda stage: str(run_dir.location_of(run_dir.generator(stage)))  # noqa: E731
    init_generator = handoff(stages[first - 1]) if first > 0 else None
    for stage in stages[first:]:
        if not train_stage(cfg, stage, run_dir, loop_config, init_generator, rank, device):
            return
        init_generator = handoff(stage)
        gc.collect()  # the finished stage's models and optimizers (DDP keeps reference cycles)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def train_stage(
    cfg: Config,
    stage: str,
    run_dir: RunDir,
    loop_config: dict[str, Any],
    init_generator: str | None,
    rank: int,
    device: torch.device,
) -> bool:
    """One stage on this worker, then (rank 0) its export and ``summary.json`` entry.

    Returns False when the run stops here on every rank: a stage that cannot start (its
    ``error.json``) or a non-finite loss (its ``nonfinite.json``); the driver says why.
    """
    context = ray.train.get_context()
    started = time.perf_counter()
    console = console_logger()
    if rank == 0:
        console.info(f"Stage {stage}: {cfg.stage(stage).iterations} steps")
    error: UserError | None = None
    try:
        trainer = StageTrainer(
            cfg,
            stage,
            rank=rank,
            world_size=context.get_world_size(),
            device=device,
            run_dir=run_dir,
            train_files=loop_config["train_files"],
            val_files=loop_config["val_files"],
            report=functools.partial(report_to_ray, run_dir.checkpoints_name(stage)),
            preemption_notice=preemption_notice,
        )
        trainer.resume(init_generator)
    except UserError as caught:  # config, hand-off or checkpoints: a restart would meet it again
        error = caught
    if stop_without_restart(error, run_dir, stage, rank, device):
        return False
    try:
        trainer.run()
        if trainer.stop_info is not None:  # non-finite loss: no export, no next stage
            return False
        if rank == 0:
            exported = trainer.export_generator()
            record = StageRecord.from_metrics(
                cfg, stage, trainer.final_metrics(), time.perf_counter() - started
            )
            record_stage(run_dir, stage, record)
            console.info(done_line(stage, run_dir.location_of(exported)))
    except Exception as error:
        raise WorkerFailed(
            f"stage {trainer.stage}, after step {trainer.step}: {type(error).__name__}: {error}"
        ) from error
    # The next stage starts from the generator rank 0 just wrote: no rank reads it before then.
    all_reduce_sum(torch.zeros(1), device)
    return True
