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

    def upload_events(self) -> None:
        pass

    def close(self) -> None:
        pass


class EventUploads:
    """What of a TensorBoard folder is in cloud storage: each file's (size, mtime) when uploaded."""

    def __init__(self, log_dir: Path, upload: Callable[[Path], None]) -> None:
        self.log_dir = log_dir
        self.upload = upload
        self.uploaded: dict[Path, tuple[int, int]] = {}

    def push_changed(self) -> int:
        """Upload every file that is new or changed since its last upload, oldest name first (the
        order TensorBoard reads a run's files in); return the bytes uploaded."""
        sent = 0
        for path in sorted(p for p in self.log_dir.rglob("*") if p.is_file()):
            info = path.stat()
            version = (info.st_size, info.st_mtime_ns)
            if self.uploaded.get(path) != version:
                self.upload(path)
                self.uploaded[path] = version
                sent += info.st_size
        return sent


class Monitor(NullMonitor):
    """TensorBoard writer for one stage (``<run>/tensorboard/<stage>/``) plus progress lines.

    ``start_step`` is the step training resumes from: TensorBoard is told to purge anything an
    earlier attempt logged after it, so curves never show a rewound or duplicated stretch.

    With ``upload`` (a run in cloud storage: it copies one file there) the events go up at most
    every ``upload_interval_s`` seconds as they are written, whenever :meth:`upload_events` is
    called (validation, checkpoints), and when the monitor closes. Object stores cannot append,
    so each upload closes the events file, uploads the files that are new since the last one and
    writes on in a new file: every file goes up once, closed, and the bytes uploaded over a stage
    equal the final size of its folder.

    A closed file is renamed ``events.out.tfevents.<second>.<host>.<pid>.0-<n>`` (``n`` counts
    the stage's files). TensorBoard reads a run's files in name order; the writer's own names end
    in a process-wide counter that is not zero-padded, so two files opened within one second
    would sort ``...10`` before ``...9``, and TensorBoard would skip the older one.
    """

    def __init__(
        self,
        log_dir: Path,
        stage: str,
        total_steps: int,
        start_step: int,
        upload: Callable[[Path], None] | None = None,
        upload_interval_s: float = 30.0,
    ) -> None:
        self.stage = stage
        self.total_steps = total_steps
        self.start_step = start_step
        self.started = time.perf_counter()
        self.last_val: tuple[float, float] | None = None  # (model, bicubic) PSNR of the last validation
        self.console = console_logger()
        self.log_dir = log_dir
        self.purge_step = start_step + 1 if start_step else None  # in the attempt's first file only
        self.uploads = EventUploads(log_dir, upload) if upload is not None else None
        self.upload_interval_s = upload_interval_s
        self.last_upload = time.monotonic()
        self.unsent = False  # events written since the last upload
        self.files_closed = 0
        self.writer = self._open_events_file()

    def _open_events_file(self):  # -> SummaryWriter
        from torch.utils.tensorboard import SummaryWriter  # imported on rank 0 only

        self.log_dir.mkdir(parents=True, exist_ok=True)
        before = set(self.log_dir.iterdir())
        writer = SummaryWriter(str(self.log_dir), purge_step=self.purge_step)
        (self.events_file,) = set(self.log_dir.iterdir()) - before  # the writer makes its file at once
        self.purge_step = None
        return writer

    def _close_events_file(self) -> None:
        """Close the events file and give it its final name (see the class docstring)."""
        self.writer.close()
        head, _, _ = self.events_file.name.rpartition(".")
        self.events_file.rename(self.log_dir / f"{head}.0-{self.files_closed:06d}")
        self.files_closed += 1

    def flush(self) -> None:
        self.writer.flush()
        self.unsent = True
        if self.uploads is not None and time.monotonic() - self.last_upload >= self.upload_interval_s:
            self.upload_events()

    def upload_events(self) -> None:
        """Upload the events written since the last upload, in a file of their own (nothing for
        a local run, or when nothing was written)."""
        if self.uploads is None or not self.unsent:
            return
        self._close_events_file()
        self.uploads.push_changed()
        self.writer = self._open_events_file()
        self.last_upload = time.monotonic()
        self.unsent = False

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
        """Close the events file and upload what is not uploaded yet (the stage's end)."""
        if self.uploads is None:
            self.writer.close()
            return
        self._close_events_file()
        self.uploads.push_changed()


def make_monitor(
    rank: int,
    log_dir: Path,
    stage: str,
    total_steps: int,
    start_step: int,
    upload: Callable[[Path], None] | None = None,
    upload_interval_s: float = 30.0,
) -> NullMonitor:
    """A ``Monitor`` on rank 0, a ``NullMonitor`` on every other rank."""
    if rank != 0:
        return NullMonitor()
    log_dir.mkdir(parents=True, exist_ok=True)
    return Monitor(log_dir, stage, total_steps, start_step, upload, upload_interval_s)
