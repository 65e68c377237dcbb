"""The run directory ``<storage>/<name>/``: the one place that spells its layout.

Everything a run writes, and everything that reads a finished run, names files through
:class:`RunDir`::

    <storage>/<name>/
      config.yaml                      the resolved config (written when training really starts)
      train.log                        everything the driver, Ray and every worker wrote (appended)
      summary.json                     per stage: steps, wall time, samples/s, validation numbers
      tensorboard/<stage>/             rank 0's TensorBoard events, one sub-folder per stage
      <name>-<stage>/step-NNNNNNNN/    Ray Train's checkpoints of each stage
      checkpoint_manager_snapshot.json Ray Train's list of reported checkpoints (not used to resume),
      .validate_storage_marker         and its storage check: Ray's run folder is the run directory
                                       (driver.fit_stages)
      <stage>/nonfinite.json           why a stage stopped on a non-finite loss (only then)
      <stage>/error.json               why a stage could not start (only then; see train/loop.py)
      generator_<stage>.safetensors    the stage's generator (+ generator_<stage>.json sidecar)
      .scan_cache/                     pre-flight scan results (unless data.cache_dir is set)

This module is plain path logic (no torch, no Ray) so the CLI, the job client and the workers
all agree on names without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
LOG_FILE = "train.log"
TENSORBOARD_DIR = "tensorboard"
NONFINITE_FILE = "nonfinite.json"
STAGE_ERROR_FILE = "error.json"
SCAN_CACHE_DIR = ".scan_cache"
# The final model of a run is the last stage it exported; later stages first.
STAGES_LAST_FIRST = ("srgan", "srresnet")


def generator_file_name(stage: str) -> str:
    return f"generator_{stage}.safetensors"


def join_run_location(storage: str, name: str) -> str:
    """``<storage>/<name>`` as text, for messages and job metadata (the storage may be remote)."""
    return f"{storage.rstrip('/')}/{name}"


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory; ``root.name`` is the run name."""

    root: Path

    @classmethod
    def of(cls, storage: str | Path, name: str) -> RunDir:
        return cls(Path(storage) / name)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def summary_file(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def log_file(self) -> Path:
        """The driver's, Ray's and every worker's full output; the console names it."""
        return self.root / LOG_FILE

    @property
    def tensorboard_root(self) -> Path:
        return self.root / TENSORBOARD_DIR

    @property
    def scan_cache(self) -> Path:
        return self.root / SCAN_CACHE_DIR

    def tensorboard(self, stage: str) -> Path:
        return self.tensorboard_root / stage

    def generator(self, stage: str) -> Path:
        return self.root / generator_file_name(stage)

    def checkpoints_name(self, stage: str) -> str:
        """The folder of a stage's checkpoints, relative to ``root`` (Ray Train's run folder)."""
        return f"{self.name}-{stage}"

    def checkpoints(self, stage: str) -> Path:
        return self.root / self.checkpoints_name(stage)

    def nonfinite_marker(self, stage: str) -> Path:
        return self.root / stage / NONFINITE_FILE

    def check_location(self) -> None:
        """Raise ``ConfigError`` if the storage root or the run folder cannot be a folder (a file
        is in the way), before anything is written."""
        from srgan_dist.config import ConfigError

        storage = self.root.parent
        for path in (storage, *storage.parents):
            if path.exists() and not path.is_dir():
                raise ConfigError(f"run.storage: {path} is a file, not a folder; choose another --storage")
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"run.name: {self.root} is a file, not a run folder; choose another --name")

    def stage_error(self, stage: str) -> Path:
        return self.root / stage / STAGE_ERROR_FILE

    def final_generator(self) -> Path | None:
        """The generator of the last stage exported so far, or None."""
        for stage in STAGES_LAST_FIRST:
            if self.generator(stage).is_file():
                return self.generator(stage)
        return None
