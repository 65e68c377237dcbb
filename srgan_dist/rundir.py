"""The run directory ``<storage>/<name>/``: the one place that spells its layout.

Everything a run writes, and everything that reads a finished run, names files through
:class:`RunDir`::

    <storage>/<name>/
      config.yaml                      the run's config as the workers train with it (written when
                                       training really starts; driver.run_config)
      train.log                        everything the driver, Ray and every worker wrote (appended)
      summary.json                     per stage: steps, wall time, samples/s, validation numbers
                                       (run_record.py, like the two stop files below)
      tensorboard/<stage>/             rank 0's TensorBoard events, one sub-folder per stage
      <name>-<stage>/step-NNNNNNNN/    Ray Train's checkpoints of each stage
      checkpoint_manager_snapshot.json Ray Train's list of reported checkpoints (not used to resume),
      .validate_storage_marker         and its storage check: Ray's run folder is the run directory
                                       (driver.fit_stages)
      <stage>/nonfinite.json           why a stage stopped on a non-finite loss (only then)
      <stage>/error.json               why a stage could not start (only then; see train/loop.py)
      generator_<stage>.safetensors    the stage's generator (+ generator_<stage>.json sidecar)
      .scan_cache/                     pre-flight scan results and converted copies (data/scan.py)

This module is plain path logic (no torch, no Ray) so the CLI, the job client and the workers
all agree on names without importing each other.

In cloud storage (``run.storage`` an ``s3://`` or ``gs://`` URI) ``root`` is the run's local
working copy and ``uri`` the run directory itself: whoever writes a file there calls
:meth:`RunDir.push` (a no-op for a local run), and whoever reads one a process elsewhere wrote
calls :meth:`RunDir.pull` first. Ray Train writes checkpoints to the URI directly, so
:meth:`RunDir.location_of` gives it (and checkpoint readers) the URI. ``srgan_dist/storage.py``
does the transfers.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from srgan_dist import storage
from srgan_dist.stages import STAGES_LAST_FIRST

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
LOG_FILE = "train.log"
TENSORBOARD_DIR = "tensorboard"
NONFINITE_FILE = "nonfinite.json"
STAGE_ERROR_FILE = "error.json"
SCAN_CACHE_DIR = ".scan_cache"


def generator_file_name(stage: str) -> str:
    return f"generator_{stage}.safetensors"


def join_run_location(storage_root: str, name: str) -> str:
    """``<storage>/<name>`` as text, for messages and job metadata (the storage may be a URI)."""
    return (
        storage.join(storage_root, name)
        if storage.is_uri(storage_root)
        else f"{storage_root.rstrip('/')}/{name}"
    )


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory; ``root.name`` is the run name."""

    root: Path
    uri: str | None = None
    """The run directory in cloud storage; ``root`` is then its local working copy."""

    @classmethod
    def of(cls, storage_root: str | Path, name: str) -> RunDir:
        if storage.is_uri(storage_root):
            return cls.at(storage.join(str(storage_root), name))
        return cls(Path(storage_root) / name)

    @classmethod
    def at(cls, location: str | Path) -> RunDir:
        """The run directory at a path or URI (``location`` as :attr:`location` gives it)."""
        if storage.is_uri(location):
            return cls(storage.working_copy(str(location)), str(location))
        return cls(Path(location))

    @property
    def location(self) -> str:
        """Where the run lives, for messages, Ray and workers: the URI, else the path."""
        return self.uri or str(self.root)

    @property
    def storage_location(self) -> str:
        """``run.storage``, the folder or URI that holds this run directory (Ray Train's
        ``storage_path``; its ``RunConfig.name`` is :attr:`name`)."""
        return storage.parent(self.uri) if self.uri else str(self.root.parent)

    def location_of(self, path: Path) -> str | Path:
        """``path`` (inside ``root``) where it really lives: its URI for a run in cloud storage."""
        if self.uri is None:
            return path
        return storage.join(self.uri, path.relative_to(self.root).as_posix())

    def push(self, path: Path) -> None:
        """Upload a file or folder written under ``root`` to the run in cloud storage (else nothing)."""
        if self.uri is not None:
            storage.upload(path, str(self.location_of(path)))

    def pull(self, path: Path) -> bool:
        """Download ``path`` from the run in cloud storage (when there); True if ``path`` now exists."""
        if (
            self.uri is not None
            and not storage.download(str(self.location_of(path)), path)
            and path.is_file()
        ):
            path.unlink()  # a stale copy of a file the run no longer has
        return path.exists()

    def remove(self, path: Path) -> None:
        """Delete a file here and in cloud storage."""
        path.unlink(missing_ok=True)
        if self.uri is not None:
            storage.delete(str(self.location_of(path)))

    def fresh_folder(self, path: Path) -> Path:
        """``path``, emptied first for a run in cloud storage: what an earlier run or attempt left
        in this machine's working copy is in the bucket already (or belongs to no run any more),
        and everything in the folder gets uploaded."""
        if self.uri is not None and path.is_dir():
            shutil.rmtree(path)
        return path

    def pull_run_files(self) -> None:
        """Make the working copy's config that of the run in cloud storage (a resumed run is
        checked against it). The log is fetched only when this machine has none, since the local
        one may hold lines not uploaded yet. The summary and generators come with
        ``run_record.first_unfinished_stage``."""
        if self.uri is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.pull(self.config_file)
        if not self.log_file.exists():
            self.pull(self.log_file)

    def push_generator(self, stage: str) -> None:
        """Upload a stage's generator, sidecar first (readers look for the weights)."""
        self.push(self.generator(stage).with_suffix(".json"))
        self.push(self.generator(stage))

    def pull_generator(self, stage: str) -> bool:
        """Download a stage's generator and its sidecar (when in cloud storage); True if the
        weights are now in the working copy."""
        self.pull(self.generator(stage).with_suffix(".json"))
        return self.pull(self.generator(stage))

    def generator_files(self) -> list[Path]:
        """Every stage's generator and its JSON sidecar."""
        return [
            path
            for stage in STAGES_LAST_FIRST
            for path in (self.generator(stage), self.generator(stage).with_suffix(".json"))
        ]

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
        is in the way), before anything is written; in cloud storage, ``StorageError`` unless the
        bucket exists and takes a test file."""
        from srgan_dist.config import ConfigError

        if self.uri is not None:
            storage.check_writable(self.uri)
        storage_root = self.root.parent
        for path in (storage_root, *storage_root.parents):
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
