"""One typed config tree for a whole srgan-dist run.

Defaults live here; presets in ``configs/*.yaml`` override them; ``key.path=value`` overrides
from the command line override both::

    cfg = load_config("configs/demo.yaml", ["srresnet.iterations=50", "data.train=/abs/photos"])
    print(to_yaml(cfg))

Every section is a ``@dataclass(kw_only=True)`` whose ``__post_init__`` rejects impossible
values with a ``ConfigError`` naming the dotted key. Unknown keys and wrong types are rejected
while the tree is built, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from srgan_dist.errors import UserError
from srgan_dist.stages import STAGE_NAMES, StageName
from srgan_dist.storage import check_uri, is_uri


class ConfigError(UserError):
    """A config value a user has to fix; the message names the dotted key."""


# Paper layer names "ij" that exist in VGG19: blocks 1-2 have two convs, blocks 3-5 four.
# (tests check this against ``srgan_dist.models.VGG_LAYER_NAMES``; config stays torch-free.)
VGG19_LAYERS: tuple[str, ...] = tuple(
    f"{block}{conv}"
    for block, convs in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))
    for conv in range(1, convs + 1)
)


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: ``1e-4`` is a float, ``off``/``yes`` stay strings.

    PyYAML follows YAML 1.1, where ``lr: 1e-4`` is the string ``"1e-4"`` and ``amp: off`` is
    ``False`` -- both then fail the type checks for values a user wrote correctly.
    """


_BOOL_TAG, _FLOAT_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_YamlLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # safe: a SafeLoader subclass


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (tags that would run code included)."""
    if isinstance(error, yaml.MarkedYAMLError):
        where = (
            f" at line {error.problem_mark.line + 1}, column {error.problem_mark.column + 1}"
            if error.problem_mark
            else ""
        )
        return f"{error.problem or error.context}{where}"
    return " ".join(str(error).split())


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass(kw_only=True)
class DataConfig:
    """Where HR photos come from and how bad files are treated."""

    train: str = ""
    """Training HR images: a folder (searched recursively), a text file with one path per line, or
    a folder in object storage (``s3://bucket/prefix``, ``gs://...``; credentials from the
    environment, as for ``run.storage``)."""
    val: str = ""
    """Validation HR images (never trained on): a folder, a list file or a folder URI. Empty
    disables validation."""
    loader: Literal["dali", "pil"] = "dali"
    """``dali`` decodes and resizes with NVIDIA DALI (GPU when the worker has one); ``pil`` is the
    reference PIL + DataLoader path."""
    num_threads: int = 2
    """CPU threads per worker for decoding (DALI ``num_threads`` / DataLoader workers)."""
    on_bad_file: Literal["error", "skip"] = "error"
    """``error`` stops before training and lists every bad file; ``skip`` logs them and goes on."""
    verify: Literal["header", "full"] = "header"
    """Pre-flight scan depth: read headers only (fast) or fully decode every file."""
    max_pixels: int = 178_956_970
    """Images with more pixels than this are rejected (PIL's decompression-bomb limit)."""
    val_max_images: int = 0
    """Validate on at most this many images (0 = all of them)."""
    val_grid_images: int = 4
    """How many validation images appear in the TensorBoard bicubic | SR | HR grid."""
    val_grid_crop: int = 128
    """Side, in HR pixels, of the centre crop each validation image contributes to the grid."""
    cache_dir: str = ""
    """A folder on each node's local disk where workers keep the objects they read from
    ``s3://`` / ``gs://`` data, so every epoch after the first reads local disk; empty reads the
    bucket every time. (Scan results are kept next to the run, in ``.scan_cache/``.)"""

    def __post_init__(self) -> None:
        _require(self.num_threads >= 1, "data.num_threads", f"must be >= 1, got {self.num_threads}")
        _require(self.max_pixels > 0, "data.max_pixels", f"must be > 0, got {self.max_pixels}")
        _require(self.val_max_images >= 0, "data.val_max_images", "must be >= 0")
        _require(self.val_grid_images >= 0, "data.val_grid_images", "must be >= 0")
        _require(self.val_grid_crop > 0, "data.val_grid_crop", "must be > 0")
        for key, value in (("data.train", self.train), ("data.val", self.val)):
            if is_uri(value):
                check_uri(value, key=key)
        _require(not is_uri(self.cache_dir), "data.cache_dir", "must be a local folder on each node")


@dataclass(kw_only=True)
class ModelConfig:
    """Generator (SRResNet) and discriminator shapes."""

    scale: int = 4
    """Upscaling factor: 2, 4 or 8 (one PixelShuffle(2) stage per factor of two)."""
    num_blocks: int = 16
    """Residual blocks B in the generator (paper: 16)."""
    channels: int = 64
    """Feature channels in the generator (paper: 64)."""
    norm: Literal["batch", "none"] = "batch"
    """Generator normalisation: BatchNorm as in the paper, or none (MSRResNet style; better for
    short runs, no BN artifacts)."""
    global_skip: Literal["none", "bicubic"] = "none"
    """``bicubic`` adds the bicubic-upsampled input to the generator output (global residual
    learning, not in the paper; parameter-free): an untrained model equals bicubic, so short runs
    beat it. ``none`` is the paper's SRResNet."""
    disc_channels: int = 64
    """Channels of the discriminator's first conv; doubles every other conv (paper: 64 → 512)."""
    disc_norm: Literal["batch", "none"] = "batch"
    """Discriminator normalisation (paper: BatchNorm on every conv but the first)."""

    def __post_init__(self) -> None:
        _require(self.scale in (2, 4, 8), "model.scale", f"must be 2, 4 or 8, got {self.scale}")
        _require(self.num_blocks >= 1, "model.num_blocks", f"must be >= 1, got {self.num_blocks}")
        _require(self.channels >= 1, "model.channels", f"must be >= 1, got {self.channels}")
        _require(self.disc_channels >= 1, "model.disc_channels", "must be >= 1")


@dataclass(kw_only=True)
class LossConfig:
    """Loss terms. SRResNet uses only the content term; SRGAN adds perceptual + adversarial."""

    content: Literal["mse", "l1"] = "mse"
    """Pixel loss on the [-1, 1] range (paper: MSE)."""
    content_weight_srgan: float = 0.0
    """Weight of the pixel loss in the SRGAN stage (paper "SRGAN-VGG54": 0, perceptual only)."""
    perceptual_layer: str = "54"
    """VGG19 layer by paper name ``ij``: after the ReLU of conv j in block i (``22``, ``54``, ...)."""
    perceptual_scale: float = 1 / 12.75
    """VGG features are multiplied by this before the MSE (paper: 1/12.75)."""
    perceptual_weight: float = 1.0
    """Weight of the perceptual term in the SRGAN generator loss."""
    adversarial_weight: float = 1e-3
    """Weight of -log D(G(LR)) in the SRGAN generator loss (paper: 1e-3)."""
    vgg_weights: str = "imagenet"
    """``imagenet`` (torchvision weights, downloaded once into the torch hub cache), a path to a
    local ``vgg19`` state dict, an ``s3://`` / ``gs://`` URI of one (each node downloads it once),
    or ``random`` (offline tests only; logged loudly)."""
    vgg_random_fallback: bool = False
    """If ``imagenet`` weights cannot be had (no internet), fall back to random init with a loud
    warning instead of stopping. Only sensible for demos and tests."""

    def __post_init__(self) -> None:
        _require(
            self.perceptual_layer in VGG19_LAYERS,
            "loss.perceptual_layer",
            f"must be a VGG19 layer {list(VGG19_LAYERS)}, got {self.perceptual_layer!r}",
        )
        for key in ("content_weight_srgan", "perceptual_scale", "perceptual_weight", "adversarial_weight"):
            value = getattr(self, key)
            _require(math.isfinite(value) and value >= 0, f"loss.{key}", f"must be >= 0, got {value}")
        _require(self.vgg_weights != "", "loss.vgg_weights", "must be 'imagenet', 'random' or a path")
        if is_uri(self.vgg_weights):
            check_uri(self.vgg_weights, key="loss.vgg_weights")


@dataclass(kw_only=True)
class StageConfig:
    """One training stage: schedule, batch and cadence."""

    iterations: int
    """Optimizer steps in this stage (each step: one G update, and one D update in SRGAN)."""
    lr: float = 1e-4
    """Initial Adam learning rate for G (and D)."""
    lr_milestones: list[int] = field(default_factory=list)
    """Steps at which the learning rate is multiplied by ``lr_gamma``."""
    lr_gamma: float = 0.1
    """Learning-rate factor at each milestone (paper SRGAN: 1e-4 → 1e-5 halfway)."""
    batch_size: int = 16
    """HR crops per worker per step; the global batch is this times the worker count."""
    hr_patch_size: int = 96
    """Side of the random HR crop in pixels; must be a multiple of ``model.scale``."""
    checkpoint_interval: int = 1000
    """Save a checkpoint every this many steps (and always at the stage's end)."""
    val_interval: int = 1000
    """Validate (PSNR/SSIM, image grid) every this many steps (and at the stage's end)."""
    log_interval: int = 50
    """Write training scalars and print a progress line every this many steps."""
    num_to_keep: int = 2
    """Checkpoints kept for this stage: the newest ones; older ones are deleted as new ones come."""

    def check(self, prefix: str, scale: int) -> None:
        """Raise ``ConfigError`` for impossible values; ``prefix`` is ``srresnet`` or ``srgan``."""
        _require(self.iterations >= 0, f"{prefix}.iterations", f"must be >= 0, got {self.iterations}")
        _require(self.lr > 0 and math.isfinite(self.lr), f"{prefix}.lr", f"must be > 0, got {self.lr}")
        _require(0 < self.lr_gamma <= 1, f"{prefix}.lr_gamma", f"must be in (0, 1], got {self.lr_gamma}")
        _require(
            all(m > 0 for m in self.lr_milestones)
            and all(a < b for a, b in zip(self.lr_milestones, self.lr_milestones[1:], strict=False)),
            f"{prefix}.lr_milestones",
            f"must be increasing positive steps, got {self.lr_milestones}",
        )
        _require(self.batch_size >= 1, f"{prefix}.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(
            self.hr_patch_size >= 16 and self.hr_patch_size % scale == 0,
            f"{prefix}.hr_patch_size",
            f"must be >= 16 and divisible by model.scale={scale}, got {self.hr_patch_size}",
        )
        for key in ("checkpoint_interval", "val_interval", "log_interval", "num_to_keep"):
            value = getattr(self, key)
            _require(value >= 1, f"{prefix}.{key}", f"must be >= 1, got {value}")


@dataclass(kw_only=True)
class TrainConfig:
    """How each worker trains, independent of the stage."""

    stages: list[StageName] = field(default_factory=lambda: list(STAGE_NAMES))
    """Stages to run, in order. ``srgan`` starts from the generator ``srresnet`` exported."""
    seed: int = 0
    """Base seed; each rank and epoch derives its own from it."""
    amp: Literal["bf16", "off"] = "bf16"
    """Mixed precision on GPU workers (ignored on CPU, where it would only be slower)."""
    channels_last: bool = True
    """Use channels_last memory format on GPU workers."""
    compile: bool = False
    """Wrap the generator and discriminator in ``torch.compile``."""
    ddp_comm_hook: Literal["none", "bf16"] = "none"
    """With several workers: ``bf16`` all-reduces the gradients in bfloat16 (torch's
    ``bf16_compress_hook``), half the bytes on the network (D's ~94 MB per step become ~47 MB), at
    bf16's 8-bit mantissa for the averaged gradient; works with NCCL and gloo."""
    on_nonfinite: Literal["error", "skip"] = "error"
    """A NaN/inf loss stops the stage (``error``) or skips that step (``skip``, counted)."""
    max_nonfinite_skips: int = 20
    """With ``on_nonfinite=skip``: stop anyway after this many skipped steps in a stage."""
    on_unusable_checkpoints: Literal["error", "restart"] = "error"
    """A stage whose checkpoints all fail their checks (e.g. the only one was cut short by a full
    disk): ``error`` stops with one line listing them (nothing is touched); ``restart`` trains
    the stage again from its hand-off, saying so (new checkpoints replace the damaged folders of
    the same step, and pruning removes the rest). Not frozen: pass it with ``--resume``."""
    max_failures: int = 2
    """Ray Train restarts the worker group from the latest checkpoint up to this many times."""
    max_preemption_failures: int = -1
    """Restarts after a node is reclaimed (a spot / preemptible node Ray Core was draining),
    counted apart from ``max_failures``; -1 = unlimited (Ray Train's default)."""
    checkpoint_upload: Literal["sync", "async"] = "async"
    """How a checkpoint reaches the run directory. Both first write it to a local temporary folder
    (the training stall of a local save). ``sync``: training waits until the files are stored;
    ``async``: Ray Train copies them on a background thread while training goes on, one checkpoint
    at a time and in order. Either way the manifest is stored last and the stage is pruned to
    ``num_to_keep`` only after it, so a checkpoint cut short is skipped on resume and older ones
    stay until a newer one is complete. Checkpoints written on a preemption notice are always
    ``sync``."""
    preemption_check_interval: int = 20
    """Every this many steps all ranks ask Ray Train whether a node of the run is being reclaimed
    (a barrier of one actor round trip); while one is, each check writes a checkpoint, so a
    reclaim redoes at most this many steps. 0 = never ask."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the generator weights with this decay (e.g. 0.999;
    warmed up as min(decay, (1 + t) / (10 + t))); validation scores it and stage exports hold it.
    0 turns it off."""

    def __post_init__(self) -> None:
        _require(len(self.stages) >= 1, "train.stages", "must name at least one stage")
        _require(len(set(self.stages)) == len(self.stages), "train.stages", "must not repeat a stage")
        _require(
            list(self.stages) == [s for s in STAGE_NAMES if s in self.stages],
            "train.stages",
            f"must be in the order {list(STAGE_NAMES)}, got {self.stages}",
        )
        _require(self.max_nonfinite_skips >= 0, "train.max_nonfinite_skips", "must be >= 0")
        _require(self.max_failures >= -1, "train.max_failures", "must be >= -1 (-1 = unlimited)")
        _require(
            self.max_preemption_failures >= -1,
            "train.max_preemption_failures",
            "must be >= -1 (-1 = unlimited)",
        )
        _require(
            self.preemption_check_interval >= 0,
            "train.preemption_check_interval",
            f"must be >= 0 steps (0 = never ask), got {self.preemption_check_interval}",
        )
        _require(0.0 <= self.ema_decay < 1.0, "train.ema_decay", f"must be in [0, 1), got {self.ema_decay}")


@dataclass(kw_only=True)
class ScalingConfig:
    """How many Ray Train workers, and on what."""

    num_workers: int = 1
    """Data-parallel workers (one per GPU on a GPU cluster); the maximum of an elastic run."""
    min_workers: int = 0
    """Elastic runs: start as soon as this many workers fit and grow to ``num_workers`` (Ray Train
    restarts the group from the latest checkpoint when the size changes). 0 = a fixed size."""
    accelerator: Literal["auto", "gpu", "cpu"] = "auto"
    """``gpu`` asks Ray for one GPU per worker and waits (``resource_timeout_s``) while an
    autoscaler adds GPU nodes; ``auto`` uses GPUs only if the cluster has them right now (the
    laptop default: on an autoscaling cluster whose GPU nodes start at 0 it would pick CPUs);
    ``cpu`` never uses GPUs."""
    resource_timeout_s: float = 900.0
    """With ``accelerator: gpu``: how long to wait for the cluster to have a GPU per worker before
    giving up with an error (nothing is started or lost by then). In a fixed-size run, also how long
    each start of the worker group waits for its resources to be free before the run stops."""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves for each worker (data decoding threads run inside it)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How Ray places workers on nodes."""

    def __post_init__(self) -> None:
        _require(self.num_workers >= 1, "scaling.num_workers", f"must be >= 1, got {self.num_workers}")
        _require(
            0 <= self.min_workers <= self.num_workers,
            "scaling.min_workers",
            f"must be between 0 (fixed size) and scaling.num_workers={self.num_workers}, got {self.min_workers}",
        )
        _require(self.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0")
        _require(self.resource_timeout_s > 0, "scaling.resource_timeout_s", "must be > 0 seconds")


@dataclass(kw_only=True)
class MonitorConfig:
    """TensorBoard events of a run in cloud storage."""

    upload_interval_s: float = 30.0
    """Upload rank 0's new TensorBoard events at most this often while training, and always at
    validation, checkpoints and the stage's end (a crash loses at most this much of the curves
    after the last upload). Each upload closes the events file and uploads only files that are
    new, so the bytes uploaded stay the size of ``tensorboard/``; a shorter interval makes more,
    smaller files."""

    def __post_init__(self) -> None:
        _require(
            math.isfinite(self.upload_interval_s) and self.upload_interval_s > 0,
            "monitor.upload_interval_s",
            f"must be > 0 seconds, got {self.upload_interval_s}",
        )


@dataclass(kw_only=True)
class RunConfig:
    """Where the run lives."""

    name: str = "srgan"
    """Run name: the folder ``<storage>/<name>/``. Re-using it with ``--resume`` continues the run."""
    storage: str = "runs"
    """Storage root: a local or shared (NFS) path, or an ``s3://`` / ``gs://`` URI (pyarrow's syntax,
    e.g. ``s3://bucket/runs?endpoint_override=host:9000&scheme=http``; credentials come from the
    environment). Relative paths are made absolute against the directory ``launch.py`` was
    started from."""

    def __post_init__(self) -> None:
        _require(
            RUN_NAME_PATTERN.fullmatch(self.name) is not None,
            "run.name",
            f"got {self.name!r}; use 1-{RUN_NAME_MAX_LENGTH} ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
        _require(self.storage.strip() != "", "run.storage", "must not be empty")
        if is_uri(self.storage):
            try:
                check_uri(self.storage, "run.storage")
            except UserError as error:
                raise ConfigError(str(error)) from None


# A run name is a folder name, part of Ray Train's run name ``<name>-<stage>`` and of its metric
# tags (Ray encodes those as ASCII: other characters fail with UnicodeEncodeError inside Ray Train's
# controller, after the run has started), and of job ids and shell commands the CLI prints.
# 200 leaves room for ``-<stage>`` and ``-<timestamp>`` under the 255-byte file name limit.
RUN_NAME_MAX_LENGTH = 200
RUN_NAME_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{RUN_NAME_MAX_LENGTH - 1}}}")


@dataclass(kw_only=True)
class Config:
    """The whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    srresnet: StageConfig = field(default_factory=lambda: StageConfig(iterations=1_000_000))
    srgan: StageConfig = field(
        default_factory=lambda: StageConfig(iterations=200_000, lr_milestones=[100_000])
    )
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        for name in STAGE_NAMES:
            self.stage(name).check(name, self.model.scale)

    def stage(self, name: StageName) -> StageConfig:
        """The config of stage ``name``."""
        return getattr(self, name)


# What a resumed run may not change: the model and its losses, the EMA, and each stage's schedule.
# Everything else (data paths that were re-mounted, worker count, intervals, loader options) may.
FROZEN_ON_RESUME: tuple[str, ...] = (
    "model",
    "loss",
    "train.ema_decay",
    *(f"{stage}.{key}" for stage in STAGE_NAMES for key in ("iterations", "lr", "lr_milestones", "lr_gamma")),
)


def frozen_changes(old: Config, new: Config) -> list[str]:
    """``key: old -> new`` for every ``FROZEN_ON_RESUME`` key that differs (stages ``old`` ran)."""
    old_dict, new_dict = to_dict(old), to_dict(new)
    changes = []
    for key in FROZEN_ON_RESUME:
        section, _, leaf = key.partition(".")
        if section in STAGE_NAMES and section not in old.train.stages:
            continue
        before, after = old_dict[section], new_dict[section]
        if leaf:
            before, after = before[leaf], after[leaf]
        if before != after:
            changes.append(f"{key}: {before} -> {after}")
    return changes


# ---------------------------------------------------------------------------------------------
# Building the tree from plain dicts (YAML) with strict key and type checks.


def _check_value(value: Any, hint: Any, key: str) -> Any:
    """Return ``value`` converted to ``hint`` or raise ``ConfigError`` naming ``key``."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        _require(isinstance(value, dict), key, f"must be a mapping, got {type(value).__name__}")
        return _from_dict(hint, value, key)
    if origin is Literal:
        choices = typing.get_args(hint)
        _require(value in choices, key, f"must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_value(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} matches none of {hint}")
    if origin is list:
        _require(isinstance(value, list), key, f"must be a list, got {type(value).__name__}")
        (item_hint,) = typing.get_args(hint)
        return [_check_value(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is type(None):
        _require(value is None, key, f"must be null, got {value!r}")
        return None
    if hint is bool:
        _require(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _require(ok, key, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _require(ok, key, f"must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # `loss.perceptual_layer=22`, `run.name=2024` read as numbers by YAML
        _require(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"config field {key} has unsupported type {hint}")  # a bug in this file


def _from_dict(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{full}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in raw.items():
        full = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _check_value(value, hints[name], full)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    _require(not missing, prefix or "config", f"missing required key(s) {missing}")
    return cls(**kwargs)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_workers(text: str) -> int | tuple[int, int]:
    """``--workers``: ``"4"`` → 4 fixed workers; ``"1-2"`` → an elastic ``(min, max)`` range."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not match:
        raise ConfigError(f"--workers: expected N or MIN-MAX (e.g. 4 or 1-4), got {text!r}")
    low = int(match.group(1))
    if match.group(2) is None:
        if low < 1:
            raise ConfigError(f"--workers: must be >= 1, got {text!r}")
        return low
    high = int(match.group(2))
    if not 1 <= low <= high:
        raise ConfigError(f"--workers: need 1 <= MIN <= MAX, got {text!r}")
    return low, high


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a ``Config`` from a nested dict; missing keys take the defaults in this file."""
    defaults = dataclasses.asdict(Config())
    return _from_dict(Config, _merge(defaults, raw))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into the key path and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.path=value")
    key, _, value_text = text.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: bad key {key!r}")
    if not value_text.strip():
        return parts, ""
    try:
        return parts, _yaml_load(value_text)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"override {key.strip()}: the value is not valid YAML ({_yaml_problem(error)})"
        ) from None


def _is_text_field(parts: list[str]) -> bool:
    """True when ``parts`` names a plain string key of ``Config`` (e.g. ``run.name``)."""
    cls: Any = Config
    for part in parts:
        if not dataclasses.is_dataclass(cls) or part not in {f.name for f in dataclasses.fields(cls)}:
            return False  # an unknown key: reported, with the known ones, when the config is built
        cls = typing.get_type_hints(cls)[part]
    return cls is str


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key.path=value`` set (keys are checked later).

    A string key takes the text as written, so ``run.name=1e5`` or ``run.name=null`` is that name,
    not a number or null.
    """
    result = _merge({}, raw)
    for text in overrides:
        parts, value = parse_override(text)
        written = text.partition("=")[2].strip()
        if _is_text_field(parts) and not (written[:1] in "'\"" and written[:1] == written[-1:]):
            value = written  # unquoted: as written (quoted text was already unquoted by YAML)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])}: is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML preset into a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = _yaml_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML ({_yaml_problem(error)})") from None
    if raw is None:  # an empty file
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return raw


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Defaults ← YAML preset at ``path`` (optional) ← ``key.path=value`` overrides."""
    raw = load_yaml(path) if path is not None else {}
    try:
        return config_from_dict(apply_overrides(raw, list(overrides)))
    except ConfigError as error:
        where = f" (in {path} or the overrides)" if path is not None else ""
        raise ConfigError(f"{error}{where}") from None


def load_saved_config(path: str | Path) -> Config:
    """A run's own ``config.yaml`` (a run directory's or a checkpoint's), with errors naming it."""
    try:
        return config_from_dict(load_yaml(path))
    except ConfigError as error:
        message = str(error)
        raise ConfigError(message if str(path) in message else f"{message} (in {path})") from None


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain YAML-able data."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML; ``config_from_dict(yaml.safe_load(...))`` gives it back."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def resolve_paths(cfg: Config, base: Path | None = None) -> Config:
    """Make local data/storage paths absolute (Ray workers run in another working directory)."""
    base = base or Path.cwd()

    def absolute(value: str) -> str:
        if not value or is_uri(value):
            return value
        return str((base / Path(value).expanduser()).resolve())

    data = dataclasses.replace(
        cfg.data,
        train=absolute(cfg.data.train),
        val=absolute(cfg.data.val),
        cache_dir=absolute(cfg.data.cache_dir),
    )
    run = dataclasses.replace(cfg.run, storage=absolute(cfg.run.storage))
    weights = cfg.loss.vgg_weights
    if weights not in ("imagenet", "random"):
        weights = absolute(weights)
    loss = dataclasses.replace(cfg.loss, vgg_weights=weights)
    return dataclasses.replace(cfg, data=data, run=run, loss=loss)
