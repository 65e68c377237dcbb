"""The run record: what a run directory says about how each stage ended.

Workers write it, the driver reads it (they may be on different machines, so every write is
pushed and every read pulls first for a run in cloud storage). The files, all JSON, written
atomically (``srgan_dist/atomic.py``):

- ``<stage>/error.json`` (:class:`StageStartError`): the stage could not start (a config, hand-off
  or checkpoint problem a restart would meet again); written by the rank that met it.
- ``<stage>/nonfinite.json`` (:class:`NonFiniteStop`): the stage stopped on a non-finite loss;
  written by rank 0.

The console line that says a stage is done (:func:`done_line`) is printed by rank 0 and awaited by
the driver, which must see it before it prints the summary; both build it here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from srgan_dist import atomic
from srgan_dist.rundir import RunDir


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
    path = stop.path(run_dir, stop.stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(dataclasses.asdict(stop), indent=2) + "\n")
    run_dir.push(path)


def read_stop(run_dir: RunDir, stage: str, kind: type[_S]) -> _S | None:
    """The ``kind`` stop file of ``stage``, or None when the stage did not stop that way."""
    path = kind.path(run_dir, stage)
    if not run_dir.pull(path):
        return None
    raw: dict[str, Any] = json.loads(path.read_text())
    return kind(**{field.name: raw[field.name] for field in dataclasses.fields(kind)})


def clear_stops(run_dir: RunDir, stage: str) -> None:
    """Forget how an earlier attempt at ``stage`` stopped (before the stage is trained again)."""
    for kind in (StageStartError, NonFiniteStop):
        run_dir.remove(kind.path(run_dir, stage))


def done_line_prefix(stage: str) -> str:
    """The start of :func:`done_line`, which the driver waits for."""
    return f"Stage {stage}: done, exported"


def done_line(stage: str, exported: str | Path) -> str:
    """Rank 0's console line once ``stage``'s generator is exported and recorded."""
    return f"{done_line_prefix(stage)} {exported}"
