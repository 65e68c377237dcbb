"""Generator weight files: ``generator_<stage>.safetensors`` plus ``generator_<stage>.json``.

The safetensors file holds the state dict and, in its metadata, the JSON model config; the JSON
file beside it holds the same config for people and other tools. Loading reads only safetensors,
so it never unpickles; ``--weights`` names such a file or a run directory (its last exported
stage), local or in cloud storage. Training checkpoints are not generator files: each stage
exports its generator here when it ends.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from srgan_dist import atomic, storage
from srgan_dist.config import ModelConfig
from srgan_dist.errors import UserError
from srgan_dist.models import Generator
from srgan_dist.models.generator import SCALES, GlobalSkip, Norm
from srgan_dist.rundir import RunDir

FORMAT = "srgan-dist-generator"
FORMAT_VERSION = 1
# Far beyond any SRResNet worth training (paper: 16 blocks, 64 channels); a config outside them is
# a damaged or tampered file, refused before anything is allocated.
MAX_NUM_BLOCKS = 1024
MAX_CHANNELS = 4096

# Marks the fields that say where weights came from, not what model they belong to.
_PROVENANCE = {"provenance": True}


class WeightsError(UserError):
    """A weights file or run directory that cannot give a generator; the message names it."""


@dataclass(frozen=True)
class GeneratorSpec:
    """What is needed to rebuild a generator, plus where it came from.

    Every field but the provenance ones (``stage``, ``step``) is a ``Generator`` argument; the
    fields without a default must be in every weights file's config.
    """

    scale: int
    num_blocks: int
    channels: int
    norm: Norm
    global_skip: GlobalSkip = "none"  # absent in files written before the option
    stage: str = field(default="", metadata=_PROVENANCE)
    step: int = field(default=0, metadata=_PROVENANCE)

    def __post_init__(self) -> None:
        def check(ok: bool, key: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"{key} must be {expected}, got {getattr(self, key)!r}")

        check(self.scale in SCALES, "scale", f"one of {SCALES}")
        check(1 <= self.num_blocks <= MAX_NUM_BLOCKS, "num_blocks", f"in 1..{MAX_NUM_BLOCKS}")
        check(1 <= self.channels <= MAX_CHANNELS, "channels", f"in 1..{MAX_CHANNELS}")
        check(self.norm in get_args(Norm), "norm", f"one of {get_args(Norm)}")
        check(self.global_skip in get_args(GlobalSkip), "global_skip", f"one of {get_args(GlobalSkip)}")
        check(self.step >= 0, "step", ">= 0")

    @classmethod
    def architecture_keys(cls) -> tuple[str, ...]:
        """The fields that are ``Generator`` arguments."""
        return tuple(f.name for f in fields(cls) if not f.metadata.get("provenance"))

    @classmethod
    def from_model_config(cls, model: ModelConfig, stage: str = "", step: int = 0) -> GeneratorSpec:
        """The generator a run's ``model`` config section describes."""
        return cls(**{key: getattr(model, key) for key in cls.architecture_keys()}, stage=stage, step=step)

    def architecture(self) -> dict[str, Any]:
        """The ``Generator`` arguments."""
        return {key: getattr(self, key) for key in self.architecture_keys()}

    def same_model(self, other: GeneratorSpec) -> bool:
        """Same architecture (weights of one load into the other), whatever stage or step."""
        return self.architecture() == other.architecture()

    def build(self) -> Generator:
        return Generator(**self.architecture())

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

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
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in raw]
        if missing:
            raise WeightsError(f"{source}: model config lacks {missing}")
        hints = get_type_hints(cls)
        values = {key: raw[key] for key in hints if key in raw}
        for key, value in values.items():
            expected = _json_type(hints[key])
            if type(value) is not expected:  # bool is not an int here, nor 1e9
                raise WeightsError(f"{source}: {key} must be a JSON {expected.__name__}, got {value!r}")
        try:
            return cls(**values)
        except ValueError as error:
            raise WeightsError(f"{source}: bad model config value: {error}") from error


def _json_type(hint: Any) -> type:
    """``int`` → ``int``; ``Literal["batch", "none"]`` → ``str``."""
    return type(get_args(hint)[0]) if get_origin(hint) is Literal else hint


def sidecar_path(weights_path: Path) -> Path:
    """``generator_srgan.safetensors`` → ``generator_srgan.json``."""
    return weights_path.with_suffix(".json")


def save_generator(model: torch.nn.Module, spec: GeneratorSpec, path: str | Path) -> Path:
    """Write ``path`` (safetensors, config in metadata) and its JSON sidecar; return ``path``.

    Each file is written under a temporary name and renamed, so a crash never leaves a
    half-written file behind an existing good one. Readers take the weights file as "the
    generator exists" (``RunDir.final_generator``) and read the sidecar beside it first, so the
    sidecar lands before the weights, as the bucket upload does (``RunDir.push_generator``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    config_text = json.dumps(spec.to_json(), indent=2)
    with atomic.atomic_path(path) as partial_weights:
        save_file(state, str(partial_weights), metadata={"srgan_dist": config_text})
        atomic.write_text(sidecar_path(path), config_text + "\n")
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
    """Resolve ``--weights``: a generator file, or a run directory (its last exported stage); a
    URI of either is downloaded into the run's local working copy first."""
    if storage.is_uri(weights):
        try:
            weights = download_weights(str(weights))
        except storage.StorageError as error:
            raise WeightsError(f"--weights: {error}") from error
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


def download_weights(uri: str) -> Path:
    """Fetch a generator file (with its sidecar) or a run's generators from cloud storage; return
    the local file or run folder."""
    storage.check_uri(uri, "--weights")
    if storage.name_of(uri).endswith(".safetensors"):
        run_dir = RunDir.at(storage.parent(uri))
        path = run_dir.root / storage.name_of(uri)
        if not run_dir.pull(path):
            raise WeightsError(f"--weights {uri}: no such file")
        run_dir.pull(sidecar_path(path))
        return path
    run_dir = RunDir.at(uri)
    for path in run_dir.generator_files():
        run_dir.pull(path)
    if not storage.exists(uri):
        raise WeightsError(f"--weights {uri}: no such file or run directory")
    run_dir.root.mkdir(parents=True, exist_ok=True)
    return run_dir.root


def load_generator(weights: str | Path, stage: str | None = None) -> tuple[Generator, GeneratorSpec]:
    """Build the generator a file or run directory describes, in eval mode on the CPU.

    The config is checked against the tensor shapes in the file before anything is built, so a
    damaged or tampered config cannot make this allocate a model bigger than the file.
    """
    path = find_generator(weights, stage)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: expected a .safetensors generator file")
    spec = read_spec(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}  # noqa: SIM118 (not a dict)
            _check_architecture(path, spec, shapes)
            state = {key: handle.get_tensor(key) for key in shapes}
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path}: not a readable safetensors file ({error})") from error
    model = spec.build()
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsError(f"{path}: weights do not match its model config {spec}: {error}") from error
    return model.eval(), spec


def _check_architecture(path: Path, spec: GeneratorSpec, shapes: dict[str, list[int]]) -> None:
    """Raise ``WeightsError`` naming the first config key that the file's tensors contradict.

    Reads ``Generator``'s parameter names (``head``, ``body.<i>``, ``upsample``, ``body_tail``);
    the round-trip tests fail if they drift apart.
    """
    head = shapes.get("head.0.weight")
    if head is None or len(head) != 4:
        raise WeightsError(f"{path}: not a srgan-dist generator (no 4-D head.0.weight tensor)")
    upsample_convs = [
        key for key in shapes if re.fullmatch(r"upsample\.\d+\.weight", key) and len(shapes[key]) == 4
    ]
    in_file = {
        "channels": head[0],
        "num_blocks": len({key.split(".")[1] for key in shapes if key.startswith("body.")}),
        "scale": 2 ** len(upsample_convs),
        "norm": "batch" if "body_tail.1.running_mean" in shapes else "none",
    }
    for key, found in in_file.items():
        if getattr(spec, key) != found:
            raise WeightsError(
                f"{path}: weights do not match its model config: {key} is {getattr(spec, key)!r} "
                f"in the config but {found!r} in the file's tensors"
            )
