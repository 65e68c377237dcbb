"""Rank-0 side effects of training: TensorBoard and console progress lines.

``make_monitor(rank, ...)`` returns a ``Monitor`` on rank 0 and a ``NullMonitor`` elsewhere, so the
training loop calls the same methods on every rank and only rank 0 writes anything. Metrics passed
in are expected to be all-reduced already.

Progress and messages are the console of a run: they go to the worker's **stdout**, which the
driver prints (everything else a worker writes goes to stderr and only to the run's log file;
see ``srgan_dist/console.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from srgan_dist.console import StdoutHandler

# Progress goes through a logger of its own, not print: Ray Train re-routes a worker's print()
# into its root logger (stderr). This one writes to stdout only.
log = logging.getLogger("srgan_dist.progress")


def console_logger() -> logging.Logger:
    """``srgan_dist.progress``: plain lines on stdout, not passed on to the root logger."""
    if not any(isinstance(h, StdoutHandler) for h in log.handlers):
        log.addHandler(StdoutHandler())
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def format_duration(seconds: float) -> str:
    """``95`` → ``1m35s``; ``3725`` → ``1h02m``."""
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class NullMonitor:
    """What non-zero ranks get: every call does nothing."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def images(self, step: int, tag: str, grid_CHW: torch.Tensor) -> None:
        pass

    def progress(self, step: int, values: dict[str, float]) -> None:
        pass

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class Monitor(NullMonitor):
    """TensorBoard writer for one stage (``<run>/tensorboard/<stage>/``) plus progress lines.

    ``start_step`` is the step training resumes from: TensorBoard is told to purge anything an
    earlier attempt logged after it, so curves never show a rewound or duplicated stretch.
    ``on_flush`` runs after each flush (a run in cloud storage uploads the events then).
    """

    def __init__(
        self,
        log_dir: Path,
        stage: str,
        total_steps: int,
        start_step: int,
        on_flush: Callable[[], None] = lambda: None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported on rank 0 only

        self.stage = stage
        self.total_steps = total_steps
        self.start_step = start_step
        self.started = time.perf_counter()
        self.last_val: tuple[float, float] | None = None  # (model, bicubic) PSNR of the last validation
        self.console = console_logger()
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)
        self.on_flush = on_flush

    def flush(self) -> None:
        self.writer.flush()
        self.on_flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.flush()
        if "val/psnr" in values and "val/psnr_bicubic" in values:
            self.last_val = (values["val/psnr"], values["val/psnr_bicubic"])

    def images(self, step: int, tag: str, grid_CHW: torch.Tensor) -> None:
        self.writer.add_image(tag, grid_CHW.clamp(0, 1).cpu(), step)
        self.flush()

    def progress(self, step: int, values: dict[str, float]) -> None:
        """One plain line a person (or a log file) can follow: step/total, losses, speed, ETA, and
        the last validation's PSNR against bicubic."""
        done = step - self.start_step
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (self.total_steps - step) if done > 0 else 0.0
        losses = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in values.items() if k.startswith("loss/"))
        speed = values.get("perf/samples_per_s", 0.0)
        val = (
            f" | val PSNR {self.last_val[0]:.2f} dB (bicubic {self.last_val[1]:.2f})" if self.last_val else ""
        )
        self.console.info(
            "[%s] step %d/%d (%.0f%%) %s | %.1f samples/s | ETA %s%s",
            self.stage, step, self.total_steps, 100 * step / self.total_steps, losses, speed, format_duration(eta), val,
        )  # fmt: skip

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        self.writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")
        self.flush()

    def message(self, text: str) -> None:
        self.console.info("[%s] %s", self.stage, text)

    def close(self) -> None:
        self.writer.close()
        self.on_flush()


def make_monitor(
    rank: int,
    log_dir: Path,
    stage: str,
    total_steps: int,
    start_step: int,
    on_flush: Callable[[], None] = lambda: None,
) -> NullMonitor:
    """A ``Monitor`` on rank 0, a ``NullMonitor`` on every other rank."""
    if rank != 0:
        return NullMonitor()
    log_dir.mkdir(parents=True, exist_ok=True)
    return Monitor(log_dir, stage, total_steps, start_step, on_flush)
