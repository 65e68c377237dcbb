"""``StageTrainer``: one stage of training on one worker, from start (or resume) to its last step.

The trainer knows nothing about Ray. ``train/loop.py`` (the Ray entry point) hands it the rank,
world size, device, the run directory and a ``report`` function that checkpoints through Ray
Train; the trainer finds its own checkpoint to resume from. In the order it happens:

1. build G (and, per ``stages.STAGES``, D and the VGG perceptual loss) identically on every rank;
2. :meth:`resume`: this stage's newest checkpoint that verifies and loads (newer damaged ones
   are skipped and named in one line), else the generator the previous stage exported (explicit
   hand-off), else from scratch; then the generator EMA;
3. :meth:`run`: wrap the models (channels_last, DDP, ``torch.compile``), open this rank's data
   shard, then per step: the stage's step function (``steps.STEP_FUNCTIONS``), and on their
   cadence a log window, a validation, a preemption check and a checkpoint (also after each
   check while a node of the run is being reclaimed); a final validation and checkpoint.

Components own their state and cadence: :class:`~srgan_dist.train.window.StepWindow` the
window's losses and non-finite steps, :class:`~srgan_dist.train.checkpoint.StageCheckpoints`
saving, pruning and resuming. Non-finite steps are read once per window (log, validation or
checkpoint), so the steady state never waits on the GPU; a step whose gradients are not finite
skips its update (``steps.finite_step``), and with ``train.on_nonfinite=error`` the stage stops
before the next checkpoint, so the last checkpoint on disk is always a finite one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from srgan_dist.config import Config, StageConfig, to_yaml
from srgan_dist.data import TrainLoader, build_train_loader, build_val_set
from srgan_dist.data.train_loader import derive_seed
from srgan_dist.generator_io import GeneratorSpec, WeightsError, load_generator, save_generator
from srgan_dist.losses import PerceptualLoss
from srgan_dist.models import Discriminator, Generator, VGGFeatures
from srgan_dist.monitor import NullMonitor, make_monitor
from srgan_dist.run_record import NonFiniteStop, write_stop
from srgan_dist.rundir import RunDir
from srgan_dist.stages import STAGES
from srgan_dist.train.checkpoint import CheckpointError, Report, StageCheckpoints
from srgan_dist.train.ema import GeneratorEMA
from srgan_dist.train.faults import FaultPlan
from srgan_dist.train.steps import STEP_FUNCTIONS, StepContext, StepModels, make_adam
from srgan_dist.train.validation import Validator
from srgan_dist.train.window import StepWindow
from srgan_dist.vgg_weights import load_vgg19_features


@dataclass(frozen=True)
class Cadence:
    """When a stage logs and validates (its checkpoints: ``StageCheckpoints.due``); the last
    step always logs and validates."""

    stage: StageConfig

    def _due(self, step: int, interval: int) -> bool:
        return step % interval == 0 or step == self.stage.iterations

    def should_log(self, step: int) -> bool:
        return self._due(step, self.stage.log_interval)

    def should_validate(self, step: int) -> bool:
        return self._due(step, self.stage.val_interval)


@dataclass
class Trainables:
    """Everything a stage updates, as plain modules (what checkpoints and exports hold);
    ``discriminator`` and its optimizer only in adversarial stages."""

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

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [opt for opt in (self.optimizer_g, self.optimizer_d) if opt is not None]

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

    def moments_follow_parameters(self) -> None:
        """Give each optimizer tensor of a parameter's shape (Adam's moments) the parameter's strides.

        Loading a checkpoint keeps the strides it was saved with, and converting a model leaves
        its optimizer's state as it was; the fused Adam kernels walk parameter, gradient and
        moments as flat memory, so a channels_last parameter with NCHW moments would get a wrong
        update, without an error.
        """
        for optimizer in self.optimizers():
            for parameter, state in optimizer.state.items():
                for key, value in state.items():
                    if (
                        torch.is_tensor(value)
                        and value.shape == parameter.shape
                        and value.stride() != parameter.stride()
                    ):
                        state[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)

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
    if STAGES[stage].adversarial:
        discriminator = Discriminator(channels=cfg.model.disc_channels, norm=cfg.model.disc_norm).to(device)
        trainables.discriminator = discriminator
        trainables.optimizer_d, trainables.scheduler_d = adam(discriminator)
    return trainables


def build_perceptual(cfg: Config, stage: str, device: torch.device) -> PerceptualLoss | None:
    """The VGG19 feature loss of stages that use one (``StageTraits.perceptual``)."""
    if not STAGES[stage].perceptual:
        return None
    features = load_vgg19_features(cfg.loss.vgg_weights, cfg.loss.vgg_random_fallback)
    vgg = VGGFeatures(cfg.loss.perceptual_layer, features).to(device)
    return PerceptualLoss(vgg, cfg.loss.perceptual_scale)


def load_handoff_generator(generator: Generator, path: str, cfg: Config) -> None:
    """Initialise ``generator`` from the previous stage's exported weights."""
    loaded, spec = load_generator(path)
    if not spec.same_model(GeneratorSpec.from_model_config(cfg.model)):
        raise WeightsError(f"{path}: generator {spec} does not match model config {cfg.model}")
    generator.load_state_dict(loaded.state_dict())


def wrap(
    model: nn.Module, world_size: int, device: torch.device, compile_model: bool, comm_hook: str = "none"
) -> nn.Module:
    """``model`` as a step runs it: DDP over the ranks (with ``train.ddp_comm_hook``), then
    ``torch.compile`` when asked."""
    if world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if comm_hook == "bf16":
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook

            model.register_comm_hook(state=None, hook=bf16_compress_hook)  # None: the default group
    return torch.compile(model) if compile_model else model


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
        preemption_notice: Callable[[], str | None] | None = None,
    ) -> None:
        """``preemption_notice`` says whether a node of the run is about to be reclaimed (one
        line, else None); every rank calls it at the same steps (``train/loop.py`` asks Ray
        Train). None: nothing to ask, the stage never checks."""
        self.cfg, self.stage, self.stage_cfg = cfg, stage, cfg.stage(stage)
        self.rank, self.world_size, self.device = rank, world_size, device
        self.run_dir, self.train_files, self.val_files = run_dir, train_files, val_files
        self.cadence = Cadence(self.stage_cfg)
        self.checkpoints = StageCheckpoints(
            run_dir, stage, self.stage_cfg, to_yaml(cfg), rank, report, cfg.train.checkpoint_upload == "async"
        )
        self.preemption_notice = preemption_notice
        self.preemption_noticed = False  # a notice came: every later check writes a checkpoint too
        self.window = StepWindow(device, cfg.train)
        self.faults = FaultPlan.from_environment()
        self.step_ctx = StepContext(loss=cfg.loss, autocast=self.autocast)
        self.use_channels_last = device.type == "cuda" and cfg.train.channels_last
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # training shapes are fixed per stage

        # 1. Identical init on every rank (DDP broadcasts rank 0's weights anyway; the seed also
        # makes a randomly initialised VGG identical everywhere).
        torch.manual_seed(cfg.train.seed)
        self.trainables = build_trainables(cfg, stage, device)
        self.perceptual = build_perceptual(cfg, stage, device)
        self.ema: GeneratorEMA | None = None

        # Progress, restored from a checkpoint by load_state_dict.
        self.step = 0
        self.train_time_s = 0.0
        self.data_state = {"epoch": 0, "position": 0}
        self.last_val: dict[str, float] = {}
        self.last_validated = -1  # the step of the newest validation; -1 = none yet
        self.resumed = False
        self.damage_note = ""  # set by resume() when it skipped damaged checkpoints
        self.stop_info: NonFiniteStop | None = None  # set when a non-finite loss stops the stage

    # -----------------------------------------------------------------------------------------
    # State: the one place that packs and unpacks a checkpoint's state.pt.

    def state_dict(self) -> dict[str, Any]:
        return {
            "trainables": self.trainables.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": self.step,
            "train_time_s": self.train_time_s,
            "data": self.data_state,
            "nonfinite_skips": self.window.skips,
            "last_val": self.last_val,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainables.load_state_dict(state["trainables"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise CheckpointError(
                    f"stage {self.stage}: train.ema_decay is on but the checkpoint holds no EMA"
                )
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.train_time_s = float(state["train_time_s"])
        self.data_state = {key: int(value) for key, value in state["data"].items()}
        if int(state["world_size"]) != self.world_size:
            self.data_state["position"] = 0  # other shards with another worker count: redo the epoch
        self.window.skips = int(state["nonfinite_skips"])
        self.last_val = dict(state["last_val"])

    def resume(self, init_generator: str | None) -> None:
        """2. Resume from the stage's newest good checkpoint, else start G from the previous
        stage's ``init_generator``, else from scratch; then start the EMA from G.

        Raises ``CheckpointError`` when the stage has checkpoints but none verifies and loads.
        """
        point = self.checkpoints.newest_good(self.cfg.train.on_unusable_checkpoints == "restart")
        self.damage_note = self.checkpoints.restart_note
        if point is None and init_generator:
            load_handoff_generator(self.trainables.generator, init_generator, self.cfg)
        if self.cfg.train.ema_decay > 0:  # starts from the hand-off weights: the EMA carries over
            self.ema = GeneratorEMA(self.trainables.generator, self.cfg.train.ema_decay)
        if point is not None:
            self.load_state_dict(point.state)
            self.resumed, self.damage_note = True, point.damage_note()
            self.last_validated = self.step  # its scores are in last_val: finish() keeps them

    # -----------------------------------------------------------------------------------------
    # 3. The run

    def run(self) -> None:
        """Train from ``self.step`` to the stage's last step (see the module docstring)."""
        self._setup()
        try:
            while self.step < self.stage_cfg.iterations:
                self.train_step()
                log = self.cadence.should_log(self.step)
                validate = self.cadence.should_validate(self.step)  # a window end, even without images
                preempted = self.preemption_check_due(self.step) and self.preempted()
                checkpoint = self.checkpoints.due(self.step) or preempted
                if not (log or validate or checkpoint):
                    continue  # inside a window: nothing is read from the device
                if log:
                    self.log_window()
                if self.stopped_nonfinite():  # before anything could validate or save its state
                    return
                if validate and self.val_files:
                    self.validate()
                if checkpoint:
                    # A node is about to go: store this one before training on (sync), so the
                    # newest complete checkpoint is never more than one check old.
                    self.save_checkpoint(wait=preempted)
            self.finish()
        finally:
            self.loader.close()
            self.monitor.close()

    def _setup(self) -> None:
        """What exists only while the stage trains, made from the (resumed) state."""
        self.wrapped = self._wrap_models()
        self.loader = self._open_loader()
        self.validator = self._make_validator()
        self.monitor = self._open_monitor()
        self.window.reset()

    def _wrap_models(self) -> StepModels:
        """The models as the stage's step runs them: ``trainables``' models (channels_last on a
        GPU when asked) wrapped in DDP and ``torch.compile``, and the frozen VGG in the steps'
        layout and autocast dtype; checkpoints, EMA and export use the plain ones, which share
        their parameters."""
        plain = self.trainables
        if self.use_channels_last:
            ema = self.ema.module if self.ema is not None else None
            for model in (plain.generator, plain.discriminator, ema):
                if model is not None:
                    model.to(memory_format=torch.channels_last)
        plain.moments_follow_parameters()  # after the conversion and any checkpoint load
        if self.perceptual is not None:
            self.perceptual.vgg.for_steps(channels_last=self.use_channels_last, weight_dtype=self.amp_dtype)
        train = self.cfg.train
        wrapped = lambda model: wrap(model, self.world_size, self.device, train.compile, train.ddp_comm_hook)  # noqa: E731
        return StepModels(
            generator=wrapped(plain.generator),
            optimizer_g=plain.optimizer_g,
            discriminator=wrapped(plain.discriminator) if plain.discriminator is not None else None,
            optimizer_d=plain.optimizer_d,
            perceptual=self.perceptual,
        )

    def _open_loader(self) -> TrainLoader:
        """This rank's shard of the training data, from the resumed epoch and position."""
        cfg, stage_cfg = self.cfg, self.stage_cfg
        return build_train_loader(
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
            cache_dir=cfg.data.cache_dir,
        )

    def _make_validator(self) -> Validator:
        """This rank's share of the validation images, and (rank 0) the grid's images.

        They stay on the CPU (whole 2K photos would crowd GPU memory); each one moves to the
        device only while it is upscaled.
        """
        scale, cpu = self.cfg.model.scale, torch.device("cpu")
        val_files = self.val_files[self.rank :: self.world_size]
        grid_files = self.val_files[: self.cfg.data.val_grid_images] if self.rank == 0 else []
        return Validator(
            build_val_set(val_files, scale=scale, device=cpu) if val_files else [],
            build_val_set(grid_files, scale=scale, device=cpu) if grid_files else [],
            scale,
            self.device,
            self.cfg.data.val_grid_crop,
        )

    def _open_monitor(self) -> NullMonitor:
        """TensorBoard (rank 0; a fresh folder, purged after ``self.step``) and the stage's first lines."""
        log_dir = self.run_dir.tensorboard(self.stage)
        if self.rank == 0:
            self.run_dir.fresh_folder(log_dir)
        iterations = self.stage_cfg.iterations
        monitor = make_monitor(
            self.rank, log_dir, self.stage, iterations, self.step,
            upload=self.run_dir.push if self.run_dir.uri else None,
            upload_interval_s=self.cfg.monitor.upload_interval_s,
        )  # fmt: skip
        where = f"on {self.world_size} worker(s)"
        if self.damage_note:
            monitor.message(self.damage_note)
        if self.resumed:
            monitor.message(f"resumed from checkpoint at step {self.step}/{iterations} {where}")
        else:
            monitor.message(f"starting {where}, device {self.device.type}, data via {self.cfg.data.loader}")
        if self.ema is not None:
            monitor.message(f"generator EMA on (decay {self.ema.decay}): validation and export use it")
        return monitor

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the steps (bf16 on a GPU with ``train.amp=bf16``), else None."""
        return torch.bfloat16 if self.device.type == "cuda" and self.cfg.train.amp == "bf16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    @property
    def exported_generator(self) -> nn.Module:
        """What validation scores and the stage exports: the EMA when the run keeps one."""
        return self.ema.module if self.ema is not None else self.trainables.generator

    # -----------------------------------------------------------------------------------------
    # One step, and what happens on its cadence

    def train_step(self) -> None:
        """One step of the stage's step function; no host synchronisation."""
        # Every random stream a step draws from depends on (seed, rank, step) alone, so a resumed
        # run draws exactly what an uninterrupted one would.
        torch.manual_seed(derive_seed(self.cfg.train.seed, self.rank, self.step))
        step_start = time.perf_counter()
        with self.faults.step_guard(self.step + 1, self.device):
            lr, hr = next(self.loader)
            data_s = time.perf_counter() - step_start
            if self.use_channels_last:
                lr = lr.contiguous(memory_format=torch.channels_last)
                hr = hr.contiguous(memory_format=torch.channels_last)
            hr = self.faults.corrupt_target(self.stage, self.step + 1, self.rank, hr)
            values = STEP_FUNCTIONS[self.stage](self.wrapped, lr, hr, self.step_ctx)
            finite = values.pop("finite")
            self.trainables.scheduler_step()
            if self.ema is not None:
                self.ema.update(self.trainables.generator)
            self.step += 1
            self.data_state = self.loader.state_dict()
            self.window.add(self.step, values, finite, data_s)
        self.train_time_s += time.perf_counter() - step_start
        self.faults.after_step(self.stage, self.step, self.rank)

    def _check_nonfinite(self) -> None:
        """Read the window's non-finite steps (one sync) and decide whether the stage stops."""
        if self.stop_info is not None:
            return
        found = self.window.take_nonfinite()
        if found is None:
            return
        if found.stops:
            self.stop_info = NonFiniteStop(
                stage=self.stage,
                step=found.first_step,
                skipped_steps=self.window.skips,
                last_checkpoint_step=max(self.checkpoints.last_saved, 0),
            )
        else:
            self.monitor.message(
                f"non-finite loss at step {found.first_step}: update skipped ({self.window.skips} so far)"
            )

    def stopped_nonfinite(self) -> bool:
        """True once a non-finite loss has stopped the stage (rank 0 has written why)."""
        self._check_nonfinite()
        if self.stop_info is None:
            return False
        # Ray Train's Result carries only the latest *checkpoint's* metrics, and this stop
        # deliberately writes no checkpoint, so the reason travels to the driver in a file.
        if self.rank == 0:
            write_stop(self.run_dir, self.stop_info)
        self.monitor.message(
            f"stopping: non-finite loss at step {self.stop_info.step}; no checkpoint written from it"
        )
        return True

    def preemption_check_due(self, step: int) -> bool:
        """Whether every rank asks about preemption after ``step`` (not at the last: ``finish``
        checkpoints it anyway)."""
        interval = self.cfg.train.preemption_check_interval
        return (
            self.preemption_notice is not None
            and interval > 0
            and step % interval == 0
            and step < self.stage_cfg.iterations
        )

    def preempted(self) -> bool:
        """Ask whether a node of the run is being reclaimed (a barrier); say so on the first notice."""
        notice = self.preemption_notice()
        if notice is not None and not self.preemption_noticed:
            self.preemption_noticed = True
            self.monitor.message(
                f"preemption notice at step {self.step}: {notice}; checkpointing now and every "
                f"{self.cfg.train.preemption_check_interval} steps until the node is gone"
            )
        return notice is not None

    def log_window(self) -> None:
        """All-reduced means of the window's losses, speed, lr and memory to TensorBoard."""
        self._check_nonfinite()
        samples_per_step = self.stage_cfg.batch_size * self.world_size
        scalars = self.window.scalars(samples_per_step, lambda local: all_reduce_sum(local, self.device))
        scalars["lr/generator"] = self.trainables.scheduler_g.get_last_lr()[0]
        self.monitor.scalars(self.step, scalars)
        self.monitor.progress(self.step, scalars)
        self.window.reset()

    def validate(self) -> None:
        """PSNR/SSIM of the exported generator (the EMA when on) and of bicubic; raw too with EMA."""
        values = self._score(self.exported_generator, grid=True)
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
        self.monitor.upload_events()
        self.last_val, self.last_validated = values, self.step
        if self.device.type == "cuda":  # keep validation's peak out of the next window's memory scalar
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

    def save_checkpoint(self, extra_metrics: dict[str, Any] | None = None, wait: bool = False) -> None:
        """Checkpoint the stage's state now (every rank calls it: a barrier); ``wait``: stored
        before this returns, whatever ``train.checkpoint_upload`` says."""
        metrics = {
            "step": self.step,
            "stage": self.stage,
            "train_time_s": self.train_time_s,
            **self.last_val,
            **(extra_metrics or {}),
        }
        self.checkpoints.save(self.state_dict(), metrics, wait=wait)
        self.monitor.upload_events()

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
        """Write ``generator_<stage>.safetensors`` (the EMA when kept) and push it."""
        spec = GeneratorSpec.from_model_config(self.cfg.model, stage=self.stage, step=self.step)
        path = save_generator(self.exported_generator, spec, self.run_dir.generator(self.stage))
        self.run_dir.push_generator(self.stage)
        return path

    def finish(self) -> None:
        """Final validation and checkpoint (unless resumed exactly at the end), then hparams."""
        if self.val_files and self.last_validated != self.step:
            self.validate()
        if self.checkpoints.last_saved != self.step:
            self.save_checkpoint({**self.final_metrics(), "final": True})
        if self.last_val:
            m, s = self.cfg.model, self.stage_cfg
            hparams = {
                "stage": self.stage, "scale": m.scale, "num_blocks": m.num_blocks, "channels": m.channels,
                "norm": m.norm, "lr": s.lr, "batch_size": s.batch_size, "hr_patch_size": s.hr_patch_size,
                "workers": self.world_size, "iterations": s.iterations, "ema_decay": self.cfg.train.ema_decay,
            }  # fmt: skip
            self.monitor.hparams(hparams, {k.replace("/", "_"): v for k, v in self.last_val.items()})
