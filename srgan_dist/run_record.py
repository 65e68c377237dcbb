"""The run record: what a run directory says about how far the run got and how each stage ended.

Workers write it, the driver reads it (they may be on different machines, so every write is
pushed and every read pulls first for a run in cloud storage). The files, all JSON, written
atomically (``srgan_dist/atomic.py``):

- ``summary.json`` (:class:`Summary`): one :class:`StageRecord` per finished stage, written by
  rank 0 when the stage ends. A stage counts as finished when its entry says ``completed`` and
  its exported generator exists; :func:`first_unfinished_stage` is where a run (re)starts, so a
  finished stage is never trained again, by a restarted worker group or by a ``--resume``.
- ``<stage>/error.json`` (:class:`StageStartError`): the stage could not start (a config, hand-off
  or checkpoint problem a restart would meet again); written by the rank that met it.
- ``<stage>/nonfinite.json`` (:class:`NonFiniteStop`): the stage stopped on a non-finite loss;
  written by rank 0.

The console line that says a stage is done (:func:`done_line`) is printed by rank 0 and awaited by
the driver, which must see it before it prints the summary (:func:`print_summary`); both build it
here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from srgan_dist import atomic
from srgan_dist.config import Config
from srgan_dist.console import say
from srgan_dist.rundir import RunDir, generator_file_name

_T = TypeVar("_T")


def _from_json(kind: type[_T], raw: dict[str, Any]) -> _T:
    """``kind`` from a JSON object: its fields that ``raw`` holds (others keep their defaults,
    keys ``kind`` does not know are left out)."""
    return kind(**{field.name: raw[field.name] for field in dataclasses.fields(kind) if field.name in raw})


def _write_json(run_dir: RunDir, path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(content, indent=2) + "\n")
    run_dir.push(path)


# ---------------------------------------------------------------------------------------------
# summary.json


@dataclass(frozen=True, kw_only=True)
class StageRecord:
    """A finished stage's entry in ``summary.json``: its length, speed and validation numbers."""

    completed: bool = True
    steps: int
    wall_time_s: float
    """From the stage's start on the worker to its export (start-up and validation included)."""
    train_time_s: float
    """Training steps only."""
    samples_per_s: float
    workers: int
    val_psnr: float | None
    """Y-channel PSNR of the exported generator on the validation set (None: no validation set)."""
    val_ssim: float | None
    val_psnr_bicubic: float | None
    val_psnr_raw: float | None = None
    """PSNR of the raw (not EMA) weights; only when an EMA is kept."""
    val_ssim_bicubic: float | None
    generator: str
    """The exported generator's file name in the run directory."""

    @classmethod
    def from_metrics(
        cls, cfg: Config, stage: str, metrics: dict[str, Any], wall_time_s: float
    ) -> StageRecord:
        """A stage's entry, from its final metrics (``StageTrainer.final_metrics`` and validation)."""
        return cls(
            steps=int(metrics.get("step", cfg.stage(stage).iterations)),
            wall_time_s=round(wall_time_s, 2),
            train_time_s=round(float(metrics.get("train_time_s", 0.0)), 2),
            samples_per_s=round(float(metrics.get("samples_per_s", 0.0)), 2),
            workers=int(metrics.get("world_size", cfg.scaling.num_workers)),
            val_psnr=metrics.get("val/psnr"),
            val_ssim=metrics.get("val/ssim"),
            val_psnr_bicubic=metrics.get("val/psnr_bicubic"),
            val_psnr_raw=metrics.get("val/psnr_raw"),
            val_ssim_bicubic=metrics.get("val/ssim_bicubic"),
            generator=generator_file_name(stage),
        )

    def to_json(self) -> dict[str, Any]:
        entry = dataclasses.asdict(self)
        if self.val_psnr_raw is None:
            del entry["val_psnr_raw"]
        return entry


@dataclass(frozen=True, kw_only=True)
class Summary:
    """``summary.json``: the run's finished stages, in the order they finished, and where the run is."""

    name: str
    run_dir: str
    """The run directory's location (its URI for a run in cloud storage)."""
    stages: dict[str, StageRecord]

    def to_json(self) -> dict[str, Any]:
        return {
            "stages": {stage: record.to_json() for stage, record in self.stages.items()},
            "run": {"name": self.name, "run_dir": self.run_dir},
        }


def read_summary(run_dir: RunDir) -> Summary:
    """The run's ``summary.json`` (pulled first), with no stages before one has finished; its run
    entry always names where the run is now."""
    path = run_dir.summary_file
    raw = json.loads(path.read_text()) if run_dir.pull(path) else {"stages": {}}
    stages = {stage: _from_json(StageRecord, entry) for stage, entry in raw["stages"].items()}
    return Summary(name=run_dir.name, run_dir=run_dir.location, stages=stages)


def record_stage(run_dir: RunDir, stage: str, record: StageRecord) -> None:
    """Add ``stage``'s entry to ``summary.json``, keeping the other stages'."""
    summary = read_summary(run_dir)
    summary = dataclasses.replace(summary, stages={**summary.stages, stage: record})
    _write_json(run_dir, run_dir.summary_file, summary.to_json())


def first_unfinished_stage(run_dir: RunDir, stages: Sequence[str]) -> str | None:
    """The first of ``stages`` not finished (every one before it is), or None when all are: where
    a run, a restarted worker group or a ``--resume`` starts. For a run in cloud storage the
    summary and the finished stages' generators are pulled first, so a process on another node
    than the rank 0 that wrote them sees them too."""
    summary = read_summary(run_dir)
    for stage in stages:
        record = summary.stages.get(stage)
        if not (record is not None and record.completed and run_dir.pull_generator(stage)):
            return stage
    return None


def unfinished_stages(run_dir: RunDir, stages: Sequence[str]) -> list[str]:
    """``stages`` from :func:`first_unfinished_stage` on: what a (re)started run trains."""
    first = first_unfinished_stage(run_dir, stages)
    return list(stages[stages.index(first) :]) if first is not None else []


def print_summary(summary: Summary) -> None:
    """The console's closing table: each stage's validation numbers against bicubic."""
    say("\nValidation PSNR / SSIM (Y channel, border = scale):")
    for stage, record in summary.stages.items():
        if record.val_psnr is None:
            say(f"  {stage:9s} no validation set")
            continue
        gain = record.val_psnr - record.val_psnr_bicubic
        say(
            f"  {stage:9s} model {record.val_psnr:.2f} dB / {record.val_ssim:.4f}   bicubic "
            f"{record.val_psnr_bicubic:.2f} dB / {record.val_ssim_bicubic:.4f}   gain {gain:+.2f} dB   "
            f"({record.steps} steps, {record.samples_per_s:.1f} samples/s)"
        )


# ---------------------------------------------------------------------------------------------
# How a stage stopped


@dataclass(frozen=True, kw_only=True)
class StageStartError:
    """Why a stage could not start on some rank; not retried (it would fail again)."""

    stage: str
    rank: int
    message: str

    @staticmethod
    def path(run_dir: RunDir, stage: str) -> Path:
        return run_dir.stage_error(stage)


@dataclass(frozen=True, kw_only=True)
class NonFiniteStop:
    """Why a stage stopped on a non-finite loss; no state from that step was saved."""

    stage: str
    step: int
    """The first step whose loss was not finite."""
    skipped_steps: int
    """Updates skipped for non-finite losses in this stage so far."""
    last_checkpoint_step: int
    """The newest checkpoint kept (0: none)."""

    @staticmethod
    def path(run_dir: RunDir, stage: str) -> Path:
        return run_dir.nonfinite_marker(stage)


Stop = StageStartError | NonFiniteStop
_S = TypeVar("_S", StageStartError, NonFiniteStop)


def write_stop(run_dir: RunDir, stop: Stop) -> None:
    """Write ``stop`` to its file in the run directory (and the run's cloud storage)."""
    _write_json(run_dir, stop.path(run_dir, stop.stage), dataclasses.asdict(stop))


def read_stop(run_dir: RunDir, stage: str, kind: type[_S]) -> _S | None:
    """The ``kind`` stop file of ``stage``, or None when the stage did not stop that way."""
    path = kind.path(run_dir, stage)
    if not run_dir.pull(path):
        return None
    return _from_json(kind, json.loads(path.read_text()))


def clear_stops(run_dir: RunDir, stage: str) -> None:
    """Forget how an earlier attempt at ``stage`` stopped (before the stage is trained again)."""
    for kind in (StageStartError, NonFiniteStop):
        run_dir.remove(kind.path(run_dir, stage))


# ---------------------------------------------------------------------------------------------
# The done line


def done_line_prefix(stage: str) -> str:
    """The start of :func:`done_line`, which the driver waits for."""
    return f"Stage {stage}: done, exported"


def done_line(stage: str, exported: str | Path) -> str:
    """Rank 0's console line once ``stage``'s generator is exported and recorded."""
    return f"{done_line_prefix(stage)} {exported}"
