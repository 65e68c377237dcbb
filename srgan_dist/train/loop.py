"""The training loop that runs inside every Ray Train worker, one stage per call.

Ray Train starts ``train_loop_per_worker(loop_config)`` on each worker with torch.distributed
already initialised (NCCL on GPUs, gloo on CPUs). The story, in order:

1. rank, world size and device from Ray; identical model init on every rank;
2. resume from this stage's latest Ray Train checkpoint if there is one, else start from the
   generator the previous stage exported (explicit hand-off), else from scratch;
3. DDP-wrap, build this rank's shard of the data;
4. iterate: step → (every ``log_interval``) all-reduced scalars to TensorBoard and a progress
   line → (every ``val_interval``) PSNR/SSIM + image grid → (every ``checkpoint_interval``)
   checkpoint through ``ray.train.report`` on every rank;
5. final validation and checkpoint at the last step.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from srgan_dist.config import Config, config_from_dict, to_yaml
from srgan_dist.data import build_train_loader, build_val_set
from srgan_dist.generator_io import GeneratorSpec, load_generator
from srgan_dist.losses import PerceptualLoss
from srgan_dist.models import Discriminator, Generator, VGGFeatures
from srgan_dist.models.vgg import load_vgg19_features
from srgan_dist.monitor import make_monitor
from srgan_dist.train import checkpoint as ckpt
from srgan_dist.train.steps import StepContext, srgan_step, srresnet_step
from srgan_dist.train.validation import Validator

NONFINITE_FILE = "nonfinite.json"


@dataclass
class Trainables:
    """Everything a stage updates; ``discriminator`` and its optimizer only in ``srgan``."""

    generator: Generator
    optimizer_g: torch.optim.Optimizer
    scheduler_g: torch.optim.lr_scheduler.LRScheduler
    discriminator: Discriminator | None = None
    optimizer_d: torch.optim.Optimizer | None = None
    scheduler_d: torch.optim.lr_scheduler.LRScheduler | None = None

    def state_dict(self) -> dict[str, Any]:
        state = {
            "generator": self.generator.state_dict(),
            "optimizer_g": self.optimizer_g.state_dict(),
            "scheduler_g": self.scheduler_g.state_dict(),
        }
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["optimizer_d"] = self.optimizer_d.state_dict()
            state["scheduler_d"] = self.scheduler_d.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.scheduler_g.load_state_dict(state["scheduler_g"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.optimizer_d.load_state_dict(state["optimizer_d"])
            self.scheduler_d.load_state_dict(state["scheduler_d"])


def build_trainables(cfg: Config, stage: str, device: torch.device) -> Trainables:
    """Models, Adam (beta1 = 0.9) and the step-wise multi-step lr schedule of ``stage``."""
    stage_cfg = cfg.stage(stage)
    m = cfg.model
    generator = GeneratorSpec.from_model_config(m).build().to(device)

    def adam(model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        optimizer = torch.optim.Adam(model.parameters(), lr=stage_cfg.lr, betas=(0.9, 0.999))
        schedule = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, stage_cfg.lr_milestones, stage_cfg.lr_gamma
        )
        return optimizer, schedule

    trainables = Trainables(generator, *adam(generator))
    if stage == "srgan":
        discriminator = Discriminator(channels=m.disc_channels, norm=m.disc_norm).to(device)
        trainables.discriminator = discriminator
        trainables.optimizer_d, trainables.scheduler_d = adam(discriminator)
    return trainables


def load_handoff_generator(generator: Generator, path: str, cfg: Config) -> None:
    """Initialise ``generator`` from the previous stage's exported weights."""
    loaded, spec = load_generator(path)
    if not spec.same_model(GeneratorSpec.from_model_config(cfg.model)):
        raise ValueError(f"{path}: generator {spec} does not match model config {cfg.model}")
    generator.load_state_dict(loaded.state_dict())


# ---------------------------------------------------------------------------------------------
# Collectives: no-ops with one worker.


def all_reduce_sum(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    on_device = tensor.to(device)
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return on_device.to(tensor.device)


def _hook_fires(hooks: dict[str, Any] | None, name: str, stage: str, step: int, rank: int) -> bool:
    """Fault injection for tests (``loop_config["test_hooks"]``); never set in normal runs."""
    hook = (hooks or {}).get(name)
    return bool(hook) and hook["stage"] == stage and hook["step"] == step and hook.get("rank", rank) == rank


def _maybe_die_for_test(hooks: dict[str, Any] | None, stage: str, step: int, rank: int) -> None:
    """Test hook ``die``: this rank's process exits once at the given step (a marker file = once)."""
    if not _hook_fires(hooks, "die", stage, step, rank):
        return
    hook = hooks["die"]
    marker = Path(hook["marker"])
    if marker.exists():
        return
    # Die like a crash *between* checkpoints: Ray's controller registers a reported checkpoint
    # when it next polls the workers (every 2 s), so let it catch up first.
    ray.train.get_all_reported_checkpoints(timeout_s=60)
    marker.write_text(f"worker rank {rank} killed at {stage} step {step}\n")
    os._exit(1)


# ---------------------------------------------------------------------------------------------
# The loop


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train one stage on this worker; see the module docstring for the order of events."""
    cfg = config_from_dict(loop_config["config"])
    stage: str = loop_config["stage"]
    stage_cfg = cfg.stage(stage)
    run_dir = Path(loop_config["run_dir"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))

    def autocast() -> contextlib.AbstractContextManager:
        if on_gpu and cfg.train.amp == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # 1. Identical init on every rank (DDP broadcasts rank 0's weights anyway; the seed also makes
    # a randomly initialised VGG identical everywhere).
    torch.manual_seed(cfg.train.seed)
    trainables = build_trainables(cfg, stage, device)
    perceptual = None
    if stage == "srgan":
        features = load_vgg19_features(cfg.loss.vgg_weights, cfg.loss.vgg_random_fallback)
        vgg = VGGFeatures(cfg.loss.perceptual_layer, features).to(device)
        perceptual = PerceptualLoss(vgg, cfg.loss.perceptual_scale)

    # 2. Resume, else hand-off, else scratch.
    step, data_epoch, train_time_s, nonfinite_skips, last_val = 0, 0, 0.0, 0, {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = ckpt.load_checkpoint(Path(directory), stage)
        trainables.load_state_dict(state["trainables"])
        step, train_time_s = int(state["step"]), float(state["train_time_s"])
        data_epoch, nonfinite_skips = int(state["data"]["epoch"]), int(state["nonfinite_skips"])
        last_val = dict(state["last_val"])
        ckpt.set_rng_state(state["rng"])
        torch.manual_seed(cfg.train.seed + 1000 * step + rank)
    else:
        if loop_config.get("init_generator"):
            load_handoff_generator(trainables.generator, loop_config["init_generator"], cfg)
        torch.manual_seed(cfg.train.seed + rank)

    # 3. Wrap for DDP / channels_last / compile; data shard.
    generator, discriminator = trainables.generator, trainables.discriminator
    if on_gpu and cfg.train.channels_last:
        generator.to(memory_format=torch.channels_last)
        if discriminator is not None:
            discriminator.to(memory_format=torch.channels_last)
    if world > 1:
        device_ids = [device.index] if on_gpu else None
        generator = nn.parallel.DistributedDataParallel(generator, device_ids=device_ids)
        if discriminator is not None:
            discriminator = nn.parallel.DistributedDataParallel(discriminator, device_ids=device_ids)
    if cfg.train.compile:
        generator = torch.compile(generator)
        discriminator = torch.compile(discriminator) if discriminator is not None else None

    loader = build_train_loader(
        loop_config["train_files"],
        loader=cfg.data.loader,
        scale=cfg.model.scale,
        hr_patch_size=stage_cfg.hr_patch_size,
        batch_size=stage_cfg.batch_size,
        rank=rank,
        world_size=world,
        device=device,
        seed=cfg.train.seed,
        num_threads=cfg.data.num_threads,
        start_epoch=data_epoch,
    )
    # Validation images stay on the CPU (whole 2K photos would crowd GPU memory); each one moves
    # to the device only while it is upscaled.
    cpu = torch.device("cpu")
    val_files = loop_config["val_files"][rank::world]
    grid_files = loop_config["val_files"][: cfg.data.val_grid_images] if rank == 0 else []
    val_set = build_val_set(val_files, scale=cfg.model.scale, device=cpu) if val_files else []
    grid_set = build_val_set(grid_files, scale=cfg.model.scale, device=cpu) if grid_files else []
    validator = Validator(val_set, grid_set, cfg.model.scale, device, cfg.data.val_grid_crop)
    has_val = bool(loop_config["val_files"])

    monitor = make_monitor(rank, run_dir / "tensorboard" / stage, stage, stage_cfg.iterations, step)
    if step:
        monitor.message(f"resumed from checkpoint at step {step}/{stage_cfg.iterations} on {world} worker(s)")
    else:
        monitor.message(f"starting on {world} worker(s), device {device.type}, data via {cfg.data.loader}")

    step_ctx = StepContext(loss=cfg.loss, autocast=autocast)
    config_yaml = to_yaml(cfg)
    global_batch = stage_cfg.batch_size * world

    def channels(tensor: torch.Tensor) -> torch.Tensor:
        return (
            tensor.contiguous(memory_format=torch.channels_last)
            if on_gpu and cfg.train.channels_last
            else tensor
        )

    def validate() -> dict[str, float]:
        sums, grid = validator.run(trainables.generator, autocast)
        sums = all_reduce_sum(sums, device)
        count = max(1.0, float(sums[4]))
        values = {
            "val/psnr": float(sums[0]) / count,
            "val/ssim": float(sums[1]) / count,
            "val/psnr_bicubic": float(sums[2]) / count,
            "val/ssim_bicubic": float(sums[3]) / count,
        }
        monitor.scalars(step, values)
        if grid is not None:
            monitor.images(step, "val/bicubic_sr_hr", grid)
        monitor.message(
            f"validation at step {step}: PSNR {values['val/psnr']:.2f} dB (bicubic "
            f"{values['val/psnr_bicubic']:.2f}), SSIM {values['val/ssim']:.4f} (bicubic {values['val/ssim_bicubic']:.4f})"
        )
        return values

    def save(metrics_extra: dict[str, float]) -> None:
        """Checkpoint through Ray Train; every rank calls ``report`` (it is a barrier)."""
        metrics = {"step": step, "stage": stage, "train_time_s": train_time_s, **last_val, **metrics_extra}
        if rank != 0:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=ckpt.checkpoint_dir_name(step))
            return
        state = {
            "trainables": trainables.state_dict(),
            "step": step,
            "train_time_s": train_time_s,
            "data": loader.state_dict(),
            "nonfinite_skips": nonfinite_skips,
            "last_val": last_val,
            "rng": ckpt.rng_state(),
            "world_size": world,
        }
        with tempfile.TemporaryDirectory() as directory:
            ckpt.save_checkpoint(Path(directory), state, stage, config_yaml)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(directory),
                checkpoint_dir_name=ckpt.checkpoint_dir_name(step),
            )

    # 4. Iterate.
    batches = iter(loader)
    sums: dict[str, torch.Tensor] = {}
    window_steps, window_data_s, window_start = 0, 0.0, time.perf_counter()
    last_saved, last_validated = (step, step) if checkpoint is not None else (-1, -1)
    stopped_nonfinite = None
    try:
        while step < stage_cfg.iterations:
            step_start = time.perf_counter()
            lr, hr = next(batches)
            data_s = time.perf_counter() - step_start
            lr, hr = channels(lr), channels(hr)
            if _hook_fires(loop_config.get("test_hooks"), "nan", stage, step + 1, rank):
                hr = hr * float("nan")
            if stage == "srresnet":
                values = srresnet_step(generator, trainables.optimizer_g, lr, hr, step_ctx)
            else:
                values = srgan_step(
                    generator, discriminator, trainables.optimizer_g, trainables.optimizer_d,
                    perceptual, lr, hr, step_ctx,
                )  # fmt: skip
            finite = bool(values.pop("finite"))
            trainables.scheduler_g.step()
            if trainables.scheduler_d is not None:
                trainables.scheduler_d.step()
            step += 1
            train_time_s += time.perf_counter() - step_start
            _maybe_die_for_test(loop_config.get("test_hooks"), stage, step, rank)

            if not finite:
                nonfinite_skips += 1
                if cfg.train.on_nonfinite == "error" or nonfinite_skips > cfg.train.max_nonfinite_skips:
                    stopped_nonfinite = {
                        "stage": stage,
                        "step": step,
                        "skipped_steps": nonfinite_skips,
                        "losses": {k: float(v) for k, v in values.items()},
                        "last_checkpoint_step": max(last_saved, 0),
                    }
                    break
                monitor.message(f"non-finite loss at step {step}: update skipped ({nonfinite_skips} so far)")
                continue

            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float()
            window_steps += 1
            window_data_s += data_s

            if step % stage_cfg.log_interval == 0 or step == stage_cfg.iterations:
                keys = sorted(sums)
                reduced = all_reduce_sum(torch.stack([sums[k] for k in keys]).double().cpu(), device)
                scalars = {k: float(v) / (window_steps * world) for k, v in zip(keys, reduced, strict=True)}
                elapsed = time.perf_counter() - window_start
                scalars["perf/samples_per_s"] = window_steps * global_batch / elapsed
                scalars["perf/data_wait_fraction"] = window_data_s / elapsed
                scalars["lr/generator"] = trainables.scheduler_g.get_last_lr()[0]
                scalars["train/nonfinite_skips"] = nonfinite_skips
                if on_gpu:
                    scalars["perf/gpu_max_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                monitor.scalars(step, scalars)
                monitor.progress(step, scalars)
                sums, window_steps, window_data_s, window_start = {}, 0, 0.0, time.perf_counter()

            if has_val and (step % stage_cfg.val_interval == 0 or step == stage_cfg.iterations):
                last_val = validate()
                last_validated = step
            if step % stage_cfg.checkpoint_interval == 0 and step < stage_cfg.iterations:
                save({})
                last_saved = step

        if stopped_nonfinite is not None:
            if rank == 0:
                path = run_dir / stage / NONFINITE_FILE
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(stopped_nonfinite, indent=2) + "\n")
            monitor.message(f"stopping: non-finite loss at step {step}; no checkpoint written from it")
            return

        # 5. Final validation and checkpoint (unless resumed exactly at the end).
        if has_val and last_validated != step:
            last_val = validate()
        if last_saved != step:
            samples_per_s = step * global_batch / train_time_s if train_time_s > 0 else 0.0
            save({"samples_per_s": samples_per_s, "world_size": world, "final": True})
        if last_val:
            hparams = {
                "stage": stage, "scale": cfg.model.scale, "num_blocks": cfg.model.num_blocks,
                "channels": cfg.model.channels, "norm": cfg.model.norm, "lr": stage_cfg.lr,
                "batch_size": stage_cfg.batch_size, "hr_patch_size": stage_cfg.hr_patch_size,
                "workers": world, "iterations": stage_cfg.iterations,
            }  # fmt: skip
            monitor.hparams(hparams, {k.replace("/", "_"): v for k, v in last_val.items()})
    finally:
        loader.close()
        monitor.close()


__all__ = ["NONFINITE_FILE", "Trainables", "build_trainables", "train_loop_per_worker"]
