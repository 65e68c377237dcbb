"""Generator weight files: ``generator_<stage>.safetensors`` plus ``generator_<stage>.json``.

The safetensors file holds the state dict and, in its metadata, the JSON model config; the JSON
file beside it holds the same config for people and other tools. Loading never unpickles: it
reads safetensors, or a ``torch.load(weights_only=True)`` checkpoint written by training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from srgan_dist.config import ModelConfig
from srgan_dist.models import Generator
from srgan_dist.rundir import RunDir

FORMAT = "srgan-dist-generator"
FORMAT_VERSION = 1
MODEL_KEYS = ("scale", "num_blocks", "channels", "norm")


class WeightsError(ValueError):
    """A weights file or run directory that cannot give a generator; the message names it."""


@dataclass(frozen=True)
class GeneratorSpec:
    """What is needed to rebuild a generator, plus where it came from."""

    scale: int
    num_blocks: int
    channels: int
    norm: str
    global_skip: str = "none"
    stage: str = ""
    step: int = 0

    @classmethod
    def from_model_config(cls, model: ModelConfig, stage: str = "", step: int = 0) -> GeneratorSpec:
        """The generator a run's ``model`` config section describes."""
        return cls(
            scale=model.scale,
            num_blocks=model.num_blocks,
            channels=model.channels,
            norm=model.norm,
            global_skip=model.global_skip,
            stage=stage,
            step=step,
        )

    def same_model(self, other: GeneratorSpec) -> bool:
        """Same architecture (weights of one load into the other), whatever stage or step."""
        architecture = ("scale", "num_blocks", "channels", "norm", "global_skip")
        return all(getattr(self, key) == getattr(other, key) for key in architecture)

    def build(self) -> Generator:
        return Generator(
            num_blocks=self.num_blocks,
            channels=self.channels,
            scale=self.scale,
            norm=self.norm,
            global_skip=self.global_skip,
        )

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **self.__dict__}

    @classmethod
    def from_json(cls, raw: Any, source: Path) -> GeneratorSpec:
        if not isinstance(raw, dict):
            raise WeightsError(f"{source}: not a srgan-dist generator config (a {type(raw).__name__})")
        if raw.get("format") != FORMAT:
            raise WeightsError(f"{source}: not a srgan-dist generator config (format={raw.get('format')!r})")
        version = raw.get("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise WeightsError(f"{source}: format_version must be an integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise WeightsError(
                f"{source}: format_version {raw['format_version']} is newer than this srgan-dist "
                f"understands ({FORMAT_VERSION}); upgrade srgan-dist"
            )
        missing = [key for key in MODEL_KEYS if key not in raw]
        if missing:
            raise WeightsError(f"{source}: model config lacks {missing}")
        try:
            return cls(
                scale=int(raw["scale"]),
                num_blocks=int(raw["num_blocks"]),
                channels=int(raw["channels"]),
                norm=str(raw["norm"]),
                global_skip=str(raw.get("global_skip", "none")),  # absent in files before the option
                stage=str(raw.get("stage", "")),
                step=int(raw.get("step", 0)),
            )
        except (TypeError, ValueError) as error:
            raise WeightsError(f"{source}: bad model config value ({error})") from error


def sidecar_path(weights_path: Path) -> Path:
    """``generator_srgan.safetensors`` → ``generator_srgan.json``."""
    return weights_path.with_suffix(".json")


def save_generator(model: torch.nn.Module, spec: GeneratorSpec, path: str | Path) -> Path:
    """Write ``path`` (safetensors, config in metadata) and its JSON sidecar; return ``path``.

    Both files are written under temporary names and renamed, so a crash never leaves a
    half-written generator behind an existing good one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    config_text = json.dumps(spec.to_json(), indent=2)
    tmp_weights = path.with_name(path.name + ".tmp")
    tmp_json = path.with_name(path.name + ".json.tmp")
    save_file(state, str(tmp_weights), metadata={"srgan_dist": config_text})
    tmp_json.write_text(config_text + "\n")
    tmp_weights.replace(path)
    tmp_json.replace(sidecar_path(path))
    return path


def read_spec(path: Path) -> GeneratorSpec:
    """The model config of a safetensors generator: its JSON sidecar, else its own metadata."""
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            return GeneratorSpec.from_json(json.loads(sidecar.read_text()), sidecar)
        except json.JSONDecodeError as error:
            raise WeightsError(f"{sidecar}: not valid JSON ({error})") from error
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path}: not a readable safetensors file ({error})") from error
    if "srgan_dist" not in metadata:
        raise WeightsError(f"{path}: no model config (no {sidecar.name} beside it and none in the file)")
    try:
        raw = json.loads(metadata["srgan_dist"])
    except json.JSONDecodeError as error:
        raise WeightsError(f"{path}: model config in its metadata is not valid JSON ({error})") from error
    return GeneratorSpec.from_json(raw, path)


def find_generator(weights: str | Path, stage: str | None = None) -> Path:
    """Resolve ``--weights``: a generator file, or a run directory (its last exported stage)."""
    weights = Path(weights)
    if weights.is_file():
        return weights
    if not weights.is_dir():
        raise WeightsError(f"--weights {weights}: no such file or run directory")
    if stage is not None:
        candidate = RunDir(weights).generator(stage)
        if not candidate.is_file():
            raise WeightsError(f"{weights}: has no {candidate.name} (stage {stage!r} not exported)")
        return candidate
    final = RunDir(weights).final_generator()
    if final is not None:
        return final
    raise WeightsError(f"{weights}: no generator_<stage>.safetensors in this run directory yet")


def load_generator(weights: str | Path, stage: str | None = None) -> tuple[Generator, GeneratorSpec]:
    """Build the generator a file or run directory describes, in eval mode on the CPU."""
    path = find_generator(weights, stage)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: expected a .safetensors generator file")
    spec = read_spec(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path}: not a readable safetensors file ({error})") from error
    try:
        model = spec.build()
    except ValueError as error:  # e.g. scale 3 or an unknown norm in the config
        raise WeightsError(f"{path}: model config {spec} is not a valid generator: {error}") from error
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsError(f"{path}: weights do not match its model config {spec}: {error}") from error
    return model.eval(), spec
