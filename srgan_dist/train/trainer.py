"""``StageTrainer``: one stage of training on one worker, from start (or resume) to its last step.

The trainer knows nothing about Ray. ``train/loop.py`` (the Ray entry point) hands it the rank,
world size, device, the stage's latest checkpoint and a ``report`` function; everything else is
here, in the order it happens:

1. build G (and D, VGG in ``srgan``) identically on every rank;
2. :meth:`resume`: this stage's newest checkpoint that verifies and loads (newer damaged ones
   are skipped and named in one line), else the generator the previous stage exported (explicit
   hand-off), else from scratch; then the generator EMA (:meth:`restore` takes a given folder);
3. :meth:`run`: DDP-wrap, open this rank's data shard, then per step: one optimizer step, and on
   their cadence a log window, a validation and a checkpoint; a final validation and checkpoint.

Non-finite steps are counted on the device and read once per window (log, validation or
checkpoint), so the steady state never waits on the GPU; a step whose gradients are not finite
skips its update (``steps.finite_step``), and with ``train.on_nonfinite=error`` the stage stops
before the next checkpoint, so the last checkpoint on disk is always a finite one.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from srgan_dist.config import Config, StageConfig, to_yaml
from srgan_dist.data import build_train_loader, build_val_set
from srgan_dist.data.train_loader import derive_seed
from srgan_dist.generator_io import GeneratorSpec, WeightsError, load_generator, save_generator
from srgan_dist.losses import PerceptualLoss
from srgan_dist.models import Discriminator, Generator, VGGFeatures
from srgan_dist.monitor import make_monitor
from srgan_dist.run_record import NonFiniteStop, write_stop
from srgan_dist.rundir import RunDir
from srgan_dist.train import checkpoint as ckpt
from srgan_dist.train.ema import GeneratorEMA
from srgan_dist.train.faults import FaultHooks
from srgan_dist.train.steps import StepContext, make_adam, srgan_step, srresnet_step
from srgan_dist.train.validation import Validator
from srgan_dist.vgg_weights import load_vgg19_features

Report = Callable[[dict[str, Any], Path | None, str], None]
"""``report(metrics, checkpoint_dir or None, checkpoint_dir_name)``; every rank calls it."""


@dataclass(frozen=True)
class Cadence:
    """When a stage logs, validates and checkpoints.

    The last step always logs and validates; its checkpoint is written by
    :meth:`StageTrainer.finish`, with the stage's totals, so ``should_checkpoint`` leaves it out.
    """

    stage: StageConfig

    def _due(self, step: int, interval: int) -> bool:
        return step % interval == 0 or step == self.stage.iterations

    def should_log(self, step: int) -> bool:
        return self._due(step, self.stage.log_interval)

    def should_validate(self, step: int) -> bool:
        return self._due(step, self.stage.val_interval)

    def should_checkpoint(self, step: int) -> bool:
        return step % self.stage.checkpoint_interval == 0 and step < self.stage.iterations

    def is_window_end(self, step: int) -> bool:
        """A step after which something is logged, validated or saved: non-finite steps are read here."""
        return self.should_log(step) or self.should_validate(step) or self.should_checkpoint(step)


@dataclass
class Trainables:
    """Everything a stage updates; ``discriminator`` and its optimizer only in ``srgan``."""

    generator: Generator
    optimizer_g: torch.optim.Optimizer
    scheduler_g: torch.optim.lr_scheduler.LRScheduler
    discriminator: Discriminator | None = None
    optimizer_d: torch.optim.Optimizer | None = None
    scheduler_d: torch.optim.lr_scheduler.LRScheduler | None = None

    def _parts(self) -> dict[str, Any]:
        parts = {
            "generator": self.generator,
            "optimizer_g": self.optimizer_g,
            "scheduler_g": self.scheduler_g,
            "discriminator": self.discriminator,
            "optimizer_d": self.optimizer_d,
            "scheduler_d": self.scheduler_d,
        }
        return {name: part for name, part in parts.items() if part is not None}

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self._parts().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, part in self._parts().items():
            fused = [group.get("fused") for group in getattr(part, "param_groups", [])]
            part.load_state_dict(state[name])
            # Optimizer.load_state_dict takes the saved groups' options, `fused` included: keep
            # the fused kernels (and finite_step's sync-free skip) for checkpoints of older runs.
            for group, was_fused in zip(getattr(part, "param_groups", []), fused, strict=True):
                group["fused"] = was_fused

    def scheduler_step(self) -> None:
        self.scheduler_g.step()
        if self.scheduler_d is not None:
            self.scheduler_d.step()


def build_trainables(cfg: Config, stage: str, device: torch.device) -> Trainables:
    """Models, fused Adam (beta1 = 0.9) and the step-wise multi-step lr schedule of ``stage``."""
    stage_cfg = cfg.stage(stage)

    def adam(model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        optimizer = make_adam(model.parameters(), stage_cfg.lr, device)
        schedule = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, stage_cfg.lr_milestones, stage_cfg.lr_gamma
        )
        return optimizer, schedule

    generator = GeneratorSpec.from_model_config(cfg.model).build().to(device)
    trainables = Trainables(generator, *adam(generator))
    if stage == "srgan":
        discriminator = Discriminator(channels=cfg.model.disc_channels, norm=cfg.model.disc_norm).to(device)
        trainables.discriminator = discriminator
        trainables.optimizer_d, trainables.scheduler_d = adam(discriminator)
    return trainables


def load_handoff_generator(generator: Generator, path: str, cfg: Config) -> None:
    """Initialise ``generator`` from the previous stage's exported weights."""
    loaded, spec = load_generator(path)
    if not spec.same_model(GeneratorSpec.from_model_config(cfg.model)):
        raise WeightsError(f"{path}: generator {spec} does not match model config {cfg.model}")
    generator.load_state_dict(loaded.state_dict())


def generator_weights_to_export(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """What ``generator_<stage>.safetensors`` holds: the EMA weights when the run keeps an EMA."""
    if state.get("ema") is not None:
        return state["ema"]["module"]
    return state["trainables"]["generator"]


def all_reduce_sum(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum over ranks (a no-op with one worker); ``tensor`` comes back on its own device."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    on_device = tensor.to(device)
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return on_device.to(tensor.device)


class StageTrainer:
    """Trains ``stage`` of ``cfg`` on this rank; :meth:`run` reads top to bottom."""

    def __init__(
        self,
        cfg: Config,
        stage: str,
        *,
        rank: int,
        world_size: int,
        device: torch.device,
        run_dir: RunDir,
        train_files: list[str],
        val_files: list[str],
        report: Report,
        hooks: FaultHooks | None = None,
    ) -> None:
        self.cfg, self.stage, self.stage_cfg = cfg, stage, cfg.stage(stage)
        self.rank, self.world_size, self.device = rank, world_size, device
        self.run_dir, self.train_files, self.val_files = run_dir, train_files, val_files
        self.report, self.hooks = report, hooks or FaultHooks()
        self.cadence = Cadence(self.stage_cfg)
        self.on_gpu = device.type == "cuda"
        self.use_channels_last = self.on_gpu and cfg.train.channels_last
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
        if self.on_gpu:
            torch.backends.cudnn.benchmark = True  # training shapes are fixed per stage

        # 1. Identical init on every rank (DDP broadcasts rank 0's weights anyway; the seed also
        # makes a randomly initialised VGG identical everywhere).
        torch.manual_seed(cfg.train.seed)
        self.trainables = build_trainables(cfg, stage, device)
        self.perceptual: PerceptualLoss | None = None
        if stage == "srgan":
            features = load_vgg19_features(cfg.loss.vgg_weights, cfg.loss.vgg_random_fallback)
            vgg = VGGFeatures(cfg.loss.perceptual_layer, features).to(device)
            self.perceptual = PerceptualLoss(vgg, cfg.loss.perceptual_scale)
        self.ema: GeneratorEMA | None = None

        # Progress, restored from a checkpoint by load_state_dict.
        self.step = 0
        self.train_time_s = 0.0
        self.nonfinite_skips = 0
        self.last_val: dict[str, float] = {}
        self.data_state = {"epoch": 0, "position": 0}
        self.resumed = False
        self.damaged_note = ""  # set by resume() when it skipped damaged checkpoints

    # -----------------------------------------------------------------------------------------
    # State: the one place that packs and unpacks a checkpoint.

    def state_dict(self) -> dict[str, Any]:
        return {
            "trainables": self.trainables.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": self.step,
            "train_time_s": self.train_time_s,
            "data": self.data_state,
            "nonfinite_skips": self.nonfinite_skips,
            "last_val": self.last_val,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainables.load_state_dict(state["trainables"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ckpt.CheckpointError(
                    f"stage {self.stage}: train.ema_decay is on but the checkpoint holds no EMA"
                )
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.train_time_s = float(state["train_time_s"])
        self.data_state = {key: int(value) for key, value in state["data"].items()}
        if int(state["world_size"]) != self.world_size:
            self.data_state["position"] = 0  # other shards with another worker count: redo the epoch
        self.nonfinite_skips = int(state["nonfinite_skips"])
        self.last_val = dict(state["last_val"])

    def resume(self, init_generator: str | None) -> None:
        """2. Resume from the stage's newest good checkpoint, else as :meth:`restore` without one.

        Raises ``CheckpointError`` when the stage has checkpoints but none verifies and loads.
        """
        point = ckpt.load_newest_good(
            self.run_dir.location_of(self.run_dir.checkpoints(self.stage)), self.stage
        )
        if point is not None and point.damaged:
            self.damaged_note = f"skipped damaged checkpoint(s), resuming from {point.name}: " + "; ".join(
                map(str, point.damaged)
            )
        self._start(point.state if point is not None else None, init_generator)

    def restore(self, checkpoint_dir: Path | None, init_generator: str | None) -> None:
        """2. Resume from ``checkpoint_dir``, else start G from ``init_generator``, else scratch."""
        state = ckpt.load_checkpoint(checkpoint_dir, self.stage) if checkpoint_dir is not None else None
        self._start(state, init_generator)

    def _start(self, state: dict[str, Any] | None, init_generator: str | None) -> None:
        if state is None and init_generator:
            load_handoff_generator(self.trainables.generator, init_generator, self.cfg)
        if self.cfg.train.ema_decay > 0:  # starts from the hand-off weights: the EMA carries over
            self.ema = GeneratorEMA(self.trainables.generator, self.cfg.train.ema_decay)
        if state is not None:
            self.load_state_dict(state)
            self.resumed = True

    # -----------------------------------------------------------------------------------------
    # 3. The run

    def run(self) -> None:
        """Train from ``self.step`` to the stage's last step (see the module docstring)."""
        self._setup()
        try:
            while self.step < self.stage_cfg.iterations:
                self.train_step()
                if not self.cadence.is_window_end(self.step):
                    continue
                if self.cadence.should_log(self.step):
                    self.log_window()
                if self.stopped_nonfinite():  # before anything could validate or save its state
                    return
                if self.has_val and self.cadence.should_validate(self.step):
                    self.validate()
                if self.cadence.should_checkpoint(self.step):
                    self.save_checkpoint()
            self.finish()
        finally:
            self.loader.close()
            self.monitor.close()

    def _setup(self) -> None:
        cfg, stage_cfg = self.cfg, self.stage_cfg
        generator, discriminator = self.trainables.generator, self.trainables.discriminator
        if self.use_channels_last:
            for model in (generator, discriminator, self.ema.module if self.ema else None):
                if model is not None:
                    model.to(memory_format=torch.channels_last)
        if self.world_size > 1:
            device_ids = [self.device.index] if self.on_gpu else None
            generator = nn.parallel.DistributedDataParallel(generator, device_ids=device_ids)
            if discriminator is not None:
                discriminator = nn.parallel.DistributedDataParallel(discriminator, device_ids=device_ids)
        if cfg.train.compile:
            generator = torch.compile(generator)
            discriminator = torch.compile(discriminator) if discriminator is not None else None
        self.generator, self.discriminator = generator, discriminator

        self.loader = build_train_loader(
            self.train_files,
            loader=cfg.data.loader,
            scale=cfg.model.scale,
            hr_patch_size=stage_cfg.hr_patch_size,
            batch_size=stage_cfg.batch_size,
            rank=self.rank,
            world_size=self.world_size,
            device=self.device,
            seed=cfg.train.seed,
            num_threads=cfg.data.num_threads,
            start_epoch=self.data_state["epoch"],
            start_position=self.data_state["position"],
        )
        self.batches = iter(self.loader)
        # Validation images stay on the CPU (whole 2K photos would crowd GPU memory); each one
        # moves to the device only while it is upscaled.
        cpu = torch.device("cpu")
        val_files = self.val_files[self.rank :: self.world_size]
        grid_files = self.val_files[: cfg.data.val_grid_images] if self.rank == 0 else []
        self.validator = Validator(
            build_val_set(val_files, scale=cfg.model.scale, device=cpu) if val_files else [],
            build_val_set(grid_files, scale=cfg.model.scale, device=cpu) if grid_files else [],
            cfg.model.scale,
            self.device,
            cfg.data.val_grid_crop,
        )
        self.has_val = bool(self.val_files)

        log_dir = self.run_dir.tensorboard(self.stage)
        if self.rank == 0:
            self.run_dir.fresh_folder(log_dir)
        self.monitor = make_monitor(
            self.rank,
            log_dir,
            self.stage,
            stage_cfg.iterations,
            self.step,
            on_flush=lambda: self.run_dir.push(log_dir),
        )
        where = f"on {self.world_size} worker(s)"
        if self.damaged_note:
            self.monitor.message(self.damaged_note)
        if self.resumed:
            self.monitor.message(
                f"resumed from checkpoint at step {self.step}/{stage_cfg.iterations} {where}"
            )
        else:
            self.monitor.message(f"starting {where}, device {self.device.type}, data via {cfg.data.loader}")
        if self.ema is not None:
            self.monitor.message(f"generator EMA on (decay {self.ema.decay}): validation and export use it")

        self.step_ctx = StepContext(loss=cfg.loss, autocast=self.autocast)
        self.config_yaml = to_yaml(cfg)
        # Saved and validated at the step a resume starts from; -1 = not yet.
        self.last_saved = self.last_validated = self.step if self.resumed else -1
        self._new_window()
        self.stop_info: dict[str, Any] | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.on_gpu and self.cfg.train.amp == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _new_window(self) -> None:
        self.window_sums: dict[str, torch.Tensor] = {}
        self.window_good = torch.zeros((), device=self.device)
        self.window_bad = torch.zeros((), device=self.device)
        self.window_first_bad = torch.zeros((), dtype=torch.long, device=self.device)
        self.window_steps, self.window_data_s, self.window_start = 0, 0.0, time.perf_counter()
        if self.on_gpu:
            torch.cuda.reset_peak_memory_stats(self.device)

    # -----------------------------------------------------------------------------------------
    # One step, and what happens on its cadence

    def train_step(self) -> None:
        """One optimizer step (G, and D in ``srgan``); no host synchronisation."""
        # Every random stream a step draws from depends on (seed, rank, step) alone, so a resumed
        # run draws exactly what an uninterrupted one would.
        torch.manual_seed(derive_seed(self.cfg.train.seed, self.rank, self.step))
        step_start = time.perf_counter()
        lr, hr = next(self.batches)
        data_s = time.perf_counter() - step_start
        if self.use_channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
            hr = hr.contiguous(memory_format=torch.channels_last)
        hr = self.hooks.corrupt_target(self.stage, self.step + 1, self.rank, hr)
        if self.stage == "srresnet":
            values = srresnet_step(self.generator, self.trainables.optimizer_g, lr, hr, self.step_ctx)
        else:
            values = srgan_step(
                self.generator, self.discriminator, self.trainables.optimizer_g, self.trainables.optimizer_d,
                self.perceptual, lr, hr, self.step_ctx,
            )  # fmt: skip
        finite = values.pop("finite").to(self.device).float()
        self.trainables.scheduler_step()
        if self.ema is not None:
            self.ema.update(self.trainables.generator)
        self.step += 1
        self.data_state = self.loader.state_dict()
        self.train_time_s += time.perf_counter() - step_start
        self.hooks.after_step(self.stage, self.step, self.rank)

        # Window bookkeeping on the device: losses of finite steps, and the first bad step.
        good = finite > 0
        for key, value in values.items():
            value = value.detach().float().to(self.device)
            total = self.window_sums.get(key, torch.zeros((), device=self.device))
            self.window_sums[key] = total + torch.where(good, value, torch.zeros_like(value))
        self.window_good += finite
        self.window_bad += 1 - finite
        first_unset = (self.window_first_bad == 0) & ~good
        self.window_first_bad = torch.where(first_unset, self.step, self.window_first_bad)
        self.window_steps += 1
        self.window_data_s += data_s

    def _check_nonfinite(self) -> None:
        """Read the window's non-finite count (one sync) and decide whether the stage stops."""
        bad = int(self.window_bad)
        if bad == 0 or self.stop_info is not None:
            return
        first_bad = int(self.window_first_bad)
        self.window_bad.zero_()
        self.window_first_bad.zero_()
        self.nonfinite_skips += bad
        policy = self.cfg.train
        if policy.on_nonfinite == "error" or self.nonfinite_skips > policy.max_nonfinite_skips:
            self.stop_info = {
                "stage": self.stage,
                "step": first_bad,
                "skipped_steps": self.nonfinite_skips,
                "last_checkpoint_step": max(self.last_saved, 0),
            }
        else:
            self.monitor.message(
                f"non-finite loss at step {first_bad}: update skipped ({self.nonfinite_skips} so far)"
            )

    def stopped_nonfinite(self) -> bool:
        """True once a non-finite loss has stopped the stage (rank 0 has written why)."""
        self._check_nonfinite()
        if self.stop_info is None:
            return False
        # Ray Train's Result carries only the latest *checkpoint's* metrics, and this stop
        # deliberately writes no checkpoint, so the reason travels to the driver in a file.
        if self.rank == 0:
            write_stop(self.run_dir, NonFiniteStop(**self.stop_info))
        self.monitor.message(
            f"stopping: non-finite loss at step {self.stop_info['step']}; no checkpoint written from it"
        )
        return True

    def log_window(self) -> None:
        """All-reduced means of the window's losses, speed, lr and memory to TensorBoard."""
        self._check_nonfinite()
        keys = sorted(self.window_sums)
        local = torch.stack([*(self.window_sums[k] for k in keys), self.window_good]).double().cpu()
        reduced = all_reduce_sum(local, self.device)
        good_steps = float(reduced[-1])  # a window of skipped steps only has no losses to show
        scalars = (
            {k: float(v) / good_steps for k, v in zip(keys, reduced[:-1], strict=True)} if good_steps else {}
        )
        elapsed = time.perf_counter() - self.window_start
        scalars["perf/samples_per_s"] = (
            self.window_steps * self.stage_cfg.batch_size * self.world_size / elapsed
        )
        scalars["perf/data_wait_fraction"] = self.window_data_s / elapsed
        scalars["lr/generator"] = self.trainables.scheduler_g.get_last_lr()[0]
        scalars["train/nonfinite_skips"] = self.nonfinite_skips
        if self.on_gpu:
            # The window's peak of torch's allocator, and the whole device's use (DALI's pools,
            # NCCL and the CUDA context included), which is what runs out first.
            scalars["perf/gpu_max_memory_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            free, total = torch.cuda.mem_get_info(self.device)
            scalars["perf/gpu_used_memory_mib"] = (total - free) / 2**20
        self.monitor.scalars(self.step, scalars)
        self.monitor.progress(self.step, scalars)
        self._new_window()

    def validate(self) -> None:
        """PSNR/SSIM of the exported generator (the EMA when on) and of bicubic; raw too with EMA."""
        values = self._score(
            self.ema.module if self.ema is not None else self.trainables.generator, grid=True
        )
        if self.ema is not None:
            raw = self._score(self.trainables.generator, grid=False)
            values["val/psnr_raw"], values["val/ssim_raw"] = raw["val/psnr"], raw["val/ssim"]
        self.monitor.scalars(self.step, values)
        text = (
            f"validation at step {self.step}: PSNR {values['val/psnr']:.2f} dB (bicubic "
            f"{values['val/psnr_bicubic']:.2f}), SSIM {values['val/ssim']:.4f} (bicubic "
            f"{values['val/ssim_bicubic']:.4f})"
        )
        if self.ema is not None:
            text += f"; raw weights PSNR {values['val/psnr_raw']:.2f} dB"
        self.monitor.message(text)
        self.last_val, self.last_validated = values, self.step
        if self.on_gpu:  # keep validation's peak out of the next training window's memory scalar
            torch.cuda.reset_peak_memory_stats(self.device)

    def _score(self, generator: nn.Module, grid: bool) -> dict[str, float]:
        sums, image_grid = self.validator.run(generator, self.autocast)
        sums = all_reduce_sum(sums, self.device)
        count = max(1.0, float(sums[4]))
        if grid and image_grid is not None:
            self.monitor.images(self.step, "val/bicubic_sr_hr", image_grid)
        return {
            "val/psnr": float(sums[0]) / count,
            "val/ssim": float(sums[1]) / count,
            "val/psnr_bicubic": float(sums[2]) / count,
            "val/ssim_bicubic": float(sums[3]) / count,
        }

    def save_checkpoint(self, extra_metrics: dict[str, Any] | None = None) -> None:
        """Checkpoint through ``report`` on every rank (a barrier); rank 0 writes the files."""
        name = ckpt.checkpoint_dir_name(self.step)
        metrics = {
            "step": self.step,
            "stage": self.stage,
            "train_time_s": self.train_time_s,
            **self.last_val,
            **(extra_metrics or {}),
        }
        if self.rank != 0:
            self.report(metrics, None, name)
        else:
            with tempfile.TemporaryDirectory() as directory:
                ckpt.save_checkpoint(Path(directory), self.state_dict(), self.stage, self.config_yaml)
                self.report(metrics, Path(directory), name)
            # Per-stage retention: Ray Train's own pruning (one num_to_keep per run) is off.
            ckpt.prune_checkpoints(
                self.run_dir.location_of(self.run_dir.checkpoints(self.stage)),
                self.stage_cfg.num_to_keep,
                self.step,
            )
        self.last_saved = self.step

    def final_metrics(self) -> dict[str, Any]:
        """The stage's totals for ``summary.json`` (also in its final checkpoint's metrics)."""
        samples_per_s = (
            self.step * self.stage_cfg.batch_size * self.world_size / self.train_time_s
            if self.train_time_s > 0
            else 0.0
        )
        return {
            "step": self.step,
            "train_time_s": self.train_time_s,
            "samples_per_s": samples_per_s,
            "world_size": self.world_size,
            **self.last_val,
        }

    def export_generator(self) -> Path:
        """Write ``generator_<stage>.safetensors`` (the EMA when kept) from the final state."""
        spec = GeneratorSpec.from_model_config(self.cfg.model, stage=self.stage, step=self.step)
        generator = spec.build()
        generator.load_state_dict(generator_weights_to_export(self.state_dict()))
        path = save_generator(generator, spec, self.run_dir.generator(self.stage))
        self.run_dir.push_generator(self.stage)
        return path

    def finish(self) -> None:
        """Final validation and checkpoint (unless resumed exactly at the end), then hparams."""
        if self.has_val and self.last_validated != self.step:
            self.validate()
        if self.last_saved != self.step:
            self.save_checkpoint({**self.final_metrics(), "final": True})
        if self.last_val:
            m, s = self.cfg.model, self.stage_cfg
            hparams = {
                "stage": self.stage, "scale": m.scale, "num_blocks": m.num_blocks, "channels": m.channels,
                "norm": m.norm, "lr": s.lr, "batch_size": s.batch_size, "hr_patch_size": s.hr_patch_size,
                "workers": self.world_size, "iterations": s.iterations, "ema_decay": self.cfg.train.ema_decay,
            }  # fmt: skip
            self.monitor.hparams(hparams, {k.replace("/", "_"): v for k, v in self.last_val.items()})
