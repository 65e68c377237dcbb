"""Training checkpoints: their format, and :class:`StageCheckpoints`, which saves, prunes and
resumes one stage's checkpoints and knows when they are due.

Each save is one ``<run>/<name>-<stage>/step-NNNNNNNN/`` folder. Rank 0 writes it to a local
staging folder and hands it to the ``report`` function of the Ray entry point (``train/loop.py``)
as a :class:`CheckpointUpload`, whose ``persist`` stores it: the files are copied into the run
directory (or its cloud storage) one by one with the manifest last (:func:`publish_checkpoint`),
then the stage's folder is pruned to ``<stage>.num_to_keep`` (Ray Train's own pruning is off, see
``driver.fit_stages``), then the staging folder is removed. ``persist`` runs inside ``report``
(``train.checkpoint_upload=sync``) or on Ray Train's upload thread after ``report`` returned
(``async``); either way pruning follows the newest checkpoint's manifest, so it never deletes a
checkpoint before a newer one is complete, nor the one being stored. A stage resumes from its
newest folder that verifies and loads, whatever Ray Train's own list of checkpoints says.

A checkpoint folder holds
- ``state.pt``: ``StageTrainer.state_dict()`` — models, optimizers, schedulers, the generator
  EMA, step, data position, wall time — tensors and plain Python only, so it loads with
  ``torch.load(weights_only=True)``;
- ``config.yaml``: the resolved run config;
- ``meta.json``: format version, stage and step, readable without torch;
- ``manifest.json``: size and sha256 of each file above, written last and atomically, so a
  folder without it is incomplete and one whose files disagree with it is damaged.

``load_checkpoint`` checks the manifest before it unpickles anything; ``load_newest_good`` is how
a stage resumes: the newest ``step-*`` folder that verifies and loads, skipping damaged ones.
What ``state.pt`` holds is ``StageTrainer``'s to say; this file owns the folder around it.

bf16 autocast needs no gradient scaler, so none is stored (``amp: bf16`` is the only AMP mode).
No RNG state is stored: every step seeds its random streams from (seed, rank, step).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from srgan_dist import atomic
from srgan_dist.config import StageConfig
from srgan_dist.errors import UserError, torch_load_problem
from srgan_dist.rundir import CONFIG_FILE, RunDir
from srgan_dist.storage import UnsafeObjectKey, delete_folder, is_uri, join, list_folders, local_copy, upload

CHECKPOINT_FORMAT_VERSION = 3  # 3: manifest.json; 2: EMA added, RNG state dropped
STATE_FILE = "state.pt"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FILES = (STATE_FILE, CONFIG_FILE, META_FILE)
_DIR_PATTERN = re.compile(r"step-(\d{8})")


class CheckpointError(UserError):
    """A checkpoint folder that cannot be resumed from; the message names it."""


class NoUsableCheckpoint(CheckpointError):
    """A stage has checkpoint folders and none verifies and loads; the message lists why."""

    def __init__(self, message: str, damaged: list[CheckpointError]) -> None:
        super().__init__(message)
        self.damaged = damaged


def checkpoint_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(directory: Path, state: dict[str, Any], stage: str, config_yaml: str) -> None:
    """Write a checkpoint into ``directory`` (a fresh temporary folder); the manifest comes last."""
    torch.save(state, directory / STATE_FILE)
    (directory / CONFIG_FILE).write_text(config_yaml)
    meta = {"format_version": CHECKPOINT_FORMAT_VERSION, "stage": stage, "step": int(state["step"])}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    manifest = {
        name: {"size": (directory / name).stat().st_size, "sha256": _sha256(directory / name)}
        for name in MANIFEST_FILES
    }
    atomic.write_text(directory / MANIFEST_FILE, json.dumps({"files": manifest}, indent=2) + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def publish_checkpoint(staging: Path, destination: Path | str) -> None:
    """Copy a folder ``save_checkpoint`` wrote into ``destination`` (a local folder or a URI), one
    file at a time and the manifest last: a copy cut short has no manifest (or files that disagree
    with it), which ``verify_checkpoint`` names and a resume skips."""
    for name in (*MANIFEST_FILES, MANIFEST_FILE):
        if is_uri(destination):
            upload(staging / name, join(str(destination), name))
        else:
            Path(destination).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(staging / name, Path(destination) / name)


def verify_checkpoint(directory: Path) -> None:
    """Raise ``CheckpointError`` naming the file and what is wrong unless every file matches the manifest."""
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{manifest_path}: missing, the checkpoint is incomplete (or older than format 3)"
        )
    try:
        files = json.loads(manifest_path.read_text())["files"]
        expected = {name: (int(files[name]["size"]), str(files[name]["sha256"])) for name in MANIFEST_FILES}
    except (ValueError, KeyError, TypeError) as error:  # not JSON, or not our layout
        raise CheckpointError(f"{manifest_path}: unreadable ({error!r})") from error
    for name, (size, sha256) in expected.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {MANIFEST_FILE})")
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(
                f"{path}: {actual} bytes, {MANIFEST_FILE} says {size} (truncated or changed)"
            )
        if _sha256(path) != sha256:
            raise CheckpointError(f"{path}: sha256 differs from {MANIFEST_FILE} (damaged or changed)")


def read_meta(directory: Path) -> dict[str, Any]:
    path = directory / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a srgan-dist checkpoint (no {META_FILE})")
    try:
        meta = json.loads(path.read_text())
    except ValueError as error:
        raise CheckpointError(f"{path}: unreadable ({error})") from error
    if meta.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{directory}: checkpoint format {meta['format_version']} is newer than this srgan-dist "
            f"reads ({CHECKPOINT_FORMAT_VERSION})"
        )
    return meta


def load_checkpoint(directory: Path, stage: str) -> dict[str, Any]:
    """Verify a checkpoint of ``stage`` against its manifest, then read ``state.pt`` (weights only)."""
    verify_checkpoint(directory)
    meta = read_meta(directory)
    if meta.get("stage") != stage:
        raise CheckpointError(f"{directory}: checkpoint of stage {meta.get('stage')!r}, expected {stage!r}")
    path = directory / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as error:  # UnpicklingError for objects other than tensors, zip/runtime errors for damage
        raise CheckpointError(f"{path}: cannot be loaded ({torch_load_problem(error)})") from None


def list_checkpoints(stage_dir: Path | str) -> list[str]:
    """The names of a stage's ``step-NNNNNNNN`` folders (a local folder or a URI), newest first."""
    return sorted((name for name in list_folders(stage_dir) if _DIR_PATTERN.fullmatch(name)), reverse=True)


def prune_checkpoints(stage_dir: Path | str, keep: int, newest_step: int) -> list[str]:
    """Delete the stage's checkpoint folders (a local folder or a URI) beyond the ``keep`` newest
    up to ``newest_step`` (the one just written); return the names deleted.

    Folders of later steps, left by an attempt that got further (a damaged one a resume skipped),
    are neither counted nor touched: training writes those steps again.
    """
    written = [
        name for name in list_checkpoints(stage_dir) if int(_DIR_PATTERN.fullmatch(name)[1]) <= newest_step
    ]
    for name in written[keep:]:
        delete_folder(join(stage_dir, name) if isinstance(stage_dir, str) else stage_dir / name)
    return written[keep:]


@dataclass
class ResumePoint:
    """The checkpoint a stage resumes from, and the newer ones skipped because they are damaged."""

    name: str
    state: dict[str, Any]
    damaged: list[CheckpointError] = field(default_factory=list)

    def damage_note(self) -> str:
        """One line naming the newer checkpoints skipped and why; empty when none was."""
        if not self.damaged:
            return ""
        return f"skipped damaged checkpoint(s), resuming from {self.name}: " + "; ".join(
            map(str, self.damaged)
        )


def load_newest_good(stage_dir: Path | str, stage: str) -> ResumePoint | None:
    """Load the newest checkpoint of ``stage`` in ``stage_dir`` that verifies and loads.

    ``stage_dir`` is a local folder or a URI; from a URI each checkpoint tried is downloaded to a
    temporary folder first.

    ``None`` when the stage has no checkpoint folder yet. When it has some but none is usable,
    raises ``CheckpointError`` listing each (a restart cannot fix that; nothing is deleted).
    """
    damaged: list[CheckpointError] = []
    for name in list_checkpoints(stage_dir):
        location = join(stage_dir, name) if isinstance(stage_dir, str) else stage_dir / name
        try:
            with local_copy(location) as directory:
                return ResumePoint(name, load_checkpoint(directory, stage), damaged)
        except CheckpointError as error:
            damaged.append(error)
        except UnsafeObjectKey as error:  # a key planted in the bucket: damage, nothing written
            damaged.append(CheckpointError(str(error)))
    if damaged:
        raise NoUsableCheckpoint(
            f"no usable checkpoint in {stage_dir}: "
            + "; ".join(str(error) for error in damaged)
            + ". Run again with --resume train.on_unusable_checkpoints=restart to train the stage from "
            "its start (or move those folders elsewhere)",
            damaged,
        )
    return None


@dataclass(frozen=True)
class CheckpointUpload:
    """A checkpoint rank 0 has written to a local staging folder, as it hands it to ``report``."""

    staging: Path
    """The local folder ``save_checkpoint`` wrote."""
    persist: Callable[[], None]
    """Store it: copy it into the stage's folder (manifest last), prune the stage, remove
    ``staging``. Safe to call again after a failure (a retried upload)."""
    background: bool
    """True: ``report`` may return before ``persist`` has run (Ray Train's ASYNC upload)."""


Report = Callable[[dict[str, Any], str, CheckpointUpload | None], None]
"""``report(metrics, checkpoint_dir_name, upload or None)``; every rank calls it (a barrier), rank
0 with the checkpoint's upload, the others with None. Ray Train's ``report`` in ``train/loop.py``
(which runs ``upload.persist`` now or on its upload thread); tests pass their own."""


class StageCheckpoints:
    """One stage's checkpoints on this rank: when one is due, saving one, resuming from one.

    Checkpoints are due every ``checkpoint_interval`` steps before the last; the last step's is
    the stage's final checkpoint, saved by ``StageTrainer.finish`` with the stage's totals.
    """

    def __init__(
        self,
        run_dir: RunDir,
        stage: str,
        stage_cfg: StageConfig,
        config_yaml: str,
        rank: int,
        report: Report,
        background_upload: bool = False,
    ) -> None:
        self.location = run_dir.location_of(run_dir.checkpoints(stage))
        self.stage, self.stage_cfg, self.config_yaml = stage, stage_cfg, config_yaml
        self.rank, self.report, self.background_upload = rank, report, background_upload
        self.last_saved = -1
        """The step of the newest checkpoint saved (stored, or being stored) or resumed from; -1 = none yet."""
        self.restart_note = ""
        """Why the stage starts over although it has checkpoints (see :meth:`newest_good`)."""

    def due(self, step: int) -> bool:
        return step % self.stage_cfg.checkpoint_interval == 0 and step < self.stage_cfg.iterations

    def newest_good(self, restart_if_unusable: bool = False) -> ResumePoint | None:
        """The stage's newest checkpoint that verifies and loads (``load_newest_good``). When it
        has checkpoints and none does: raise, or with ``restart_if_unusable`` return None (the
        stage starts over) and keep why in :attr:`restart_note`."""
        try:
            point = load_newest_good(self.location, self.stage)
        except NoUsableCheckpoint as error:
            if not restart_if_unusable:
                raise
            self.restart_note = (
                f"no usable checkpoint in {self.location} ("
                + "; ".join(map(str, error.damaged))
                + "): training the stage from its start (train.on_unusable_checkpoints=restart)"
            )
            return None
        if point is not None:
            self.last_saved = int(point.state["step"])
        return point

    def save(self, state: dict[str, Any], metrics: dict[str, Any], wait: bool = False) -> None:
        """Checkpoint ``state`` through ``report`` on every rank; rank 0 writes it to a staging
        folder, and it is stored in the background when ``background_upload`` and not ``wait``."""
        step = int(state["step"])
        name = checkpoint_dir_name(step)
        upload = None
        if self.rank == 0:
            staging = Path(tempfile.mkdtemp(prefix=f"srgan-dist-{name}-"))
            try:
                save_checkpoint(staging, state, self.stage, self.config_yaml)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            persist = lambda: self._persist(staging, step)  # noqa: E731
            upload = CheckpointUpload(staging, persist, background=self.background_upload and not wait)
        self.report(metrics, name, upload)
        self.last_saved = step

    def _persist(self, staging: Path, step: int) -> None:
        """Store the staged checkpoint of ``step``, then prune the stage: one at a time, in step
        order (Ray Train runs uploads on one thread, in the order they were reported)."""
        name = checkpoint_dir_name(step)
        publish_checkpoint(
            staging, join(self.location, name) if isinstance(self.location, str) else self.location / name
        )
        prune_checkpoints(self.location, self.stage_cfg.num_to_keep, step)
        # Only after success: on a failure the folder stays for Ray Train's retry of the upload
        # (a failed upload then fails the worker, and the staging folder is left in the node's
        # temporary directory).
        shutil.rmtree(staging)
