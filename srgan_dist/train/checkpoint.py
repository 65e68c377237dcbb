"""Training checkpoints: one ``step-NNNNNNNN/`` folder per save, managed by Ray Train.

A checkpoint folder holds
- ``state.pt``: ``StageTrainer.state_dict()`` — models, optimizers, schedulers, the generator
  EMA, step, data position, wall time — tensors and plain Python only, so it loads with
  ``torch.load(weights_only=True)``;
- ``config.yaml``: the resolved run config;
- ``meta.json``: format version, stage and step, readable without torch.

bf16 autocast needs no gradient scaler, so none is stored (``amp: bf16`` is the only AMP mode).
No RNG state is stored: every step seeds its random streams from (seed, rank, step).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from srgan_dist.rundir import CONFIG_FILE

CHECKPOINT_FORMAT_VERSION = 2  # 2: EMA added, RNG state dropped (1 still loads)
STATE_FILE = "state.pt"
META_FILE = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be resumed from; the message names it."""


def checkpoint_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(directory: Path, state: dict[str, Any], stage: str, config_yaml: str) -> None:
    """Write a checkpoint into ``directory`` (a fresh temporary folder)."""
    torch.save(state, directory / STATE_FILE)
    (directory / CONFIG_FILE).write_text(config_yaml)
    meta = {"format_version": CHECKPOINT_FORMAT_VERSION, "stage": stage, "step": int(state["step"])}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(directory: Path) -> dict[str, Any]:
    path = directory / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a srgan-dist checkpoint (no {META_FILE})")
    meta = json.loads(path.read_text())
    if meta.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{directory}: checkpoint format {meta['format_version']} is newer than this srgan-dist "
            f"reads ({CHECKPOINT_FORMAT_VERSION})"
        )
    return meta


def load_checkpoint(directory: Path, stage: str) -> dict[str, Any]:
    """Read ``state.pt`` of a checkpoint of ``stage`` (no unpickling of arbitrary objects)."""
    meta = read_meta(directory)
    if meta["stage"] != stage:
        raise CheckpointError(f"{directory}: checkpoint of stage {meta['stage']!r}, expected {stage!r}")
    try:
        return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle/zip/runtime errors for damaged files
        raise CheckpointError(f"{directory / STATE_FILE}: cannot be loaded ({error})") from error
