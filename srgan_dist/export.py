"""Export a trained generator: safetensors (re-saved, one stage picked), ONNX or TorchScript.

    srgan-dist export --weights runs/demo --format onnx            # → runs/demo/generator_srgan.onnx

ONNX and TorchScript exports are *upscalers*, ready to deploy: input ``lr`` float32
(N, 3, h, w) RGB in [0, 1]; output ``sr`` float32 (N, 3, h*scale, w*scale) RGB in [0, 1]
(the generator's [-1, 1] output mapped and clamped, as ``upscale`` does). Batch, height and
width are dynamic. After writing, each export is run on two input sizes and compared with
PyTorch (ONNX through onnxruntime on the CPU); the largest absolute difference is reported and
the export fails if it exceeds ``PARITY_TOLERANCE``.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``) with ``dynamic_axes``: it needs
only the ``onnx`` package, while the newer torch.export-based exporter also needs
``onnxscript``. TorchScript itself is deprecated in torch 2.14 but still the simplest file a C++
(libtorch) program can load; the export silences those deprecation warnings.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from srgan_dist.atomic import atomic_path
from srgan_dist.errors import UserError
from srgan_dist.generator_io import GeneratorSpec, find_generator, load_generator, save_generator
from srgan_dist.models import Generator, generator_output_to_unit

ExportFormat = Literal["safetensors", "onnx", "torchscript"]
FORMATS: tuple[ExportFormat, ...] = ("safetensors", "onnx", "torchscript")
SUFFIXES: dict[ExportFormat, str] = {"safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-4
"""Largest allowed |export - PyTorch| on [0, 1] outputs (0.026 of a grey level)."""
PARITY_SHAPES = ((1, 3, 24, 32), (2, 3, 17, 29))
"""Two input shapes (N, 3, h, w) each export is checked on: different batch, height, width."""


class ExportError(UserError):
    """An export that was written but does not reproduce the PyTorch model."""


class UnitRangeUpscaler(nn.Module):
    """RGB [0, 1] → RGB [0, 1]: the generator followed by ``generator_output_to_unit``."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return generator_output_to_unit(self.generator(lr))


@dataclass(frozen=True)
class ParityCheck:
    """One comparison of an export against PyTorch."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    max_abs_diff: float


@dataclass(frozen=True)
class ExportResult:
    path: Path
    spec: GeneratorSpec
    checks: tuple[ParityCheck, ...]


def default_output(source: Path, fmt: ExportFormat) -> Path:
    """``generator_srgan.safetensors`` → ``generator_srgan.onnx`` / ``.pt`` beside it."""
    return source.with_suffix(SUFFIXES[fmt])


def _parity(
    run_export: Callable[[np.ndarray], np.ndarray], upscaler: nn.Module, shapes=PARITY_SHAPES
) -> tuple[ParityCheck, ...]:
    generator = torch.Generator().manual_seed(0)
    checks = []
    for shape in shapes:
        lr = torch.rand(shape, generator=generator)
        with torch.inference_mode():
            expected = upscaler(lr).numpy()
        actual = run_export(lr.numpy())
        if actual.shape != expected.shape:
            raise ExportError(f"export: shape {actual.shape} for input {shape}, PyTorch {expected.shape}")
        checks.append(ParityCheck(shape, tuple(actual.shape), float(np.abs(actual - expected).max())))
    return tuple(checks)


def export_onnx(upscaler: UnitRangeUpscaler, spec: GeneratorSpec, path: Path) -> tuple[ParityCheck, ...]:
    """Write ONNX with dynamic batch/height/width and the model config as metadata; check it."""
    import onnx
    import onnxruntime

    example = torch.rand(1, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter's notice
        torch.onnx.export(
            upscaler,
            (example,),
            str(path),
            dynamo=False,
            input_names=["lr"],
            output_names=["sr"],
            dynamic_axes={
                "lr": {0: "batch", 2: "height", 3: "width"},
                "sr": {0: "batch", 2: "sr_height", 3: "sr_width"},
            },
            opset_version=ONNX_OPSET,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    for key, value in {
        "srgan_dist": json.dumps(spec.to_json()),
        "scale": str(spec.scale),
        "input": "lr: float32 (N, 3, h, w) RGB in [0, 1]",
        "output": f"sr: float32 (N, 3, h*{spec.scale}, w*{spec.scale}) RGB in [0, 1]",
    }.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _parity(lambda lr: session.run(["sr"], {"lr": lr})[0], upscaler)


def export_torchscript(upscaler: UnitRangeUpscaler, path: Path) -> tuple[ParityCheck, ...]:
    """Write a traced TorchScript module (fully convolutional, so any input size works); check it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        traced = torch.jit.trace(upscaler, torch.rand(1, 3, 16, 16))
        traced.save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(lr: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded(torch.from_numpy(lr)).numpy()

    return _parity(run, upscaler)


def export_generator(
    weights: str | Path, fmt: ExportFormat, output: str | Path | None = None, stage: str | None = None
) -> ExportResult:
    """Export the generator a file or run directory holds; raise :class:`ExportError` on a parity miss."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    source = find_generator(weights, stage)
    model, spec = load_generator(source)
    if output is None and fmt == "safetensors":
        raise UserError("--format safetensors needs --output (the default path is the source file itself)")
    path = Path(output) if output is not None else default_output(source, fmt)
    if path.resolve() == source.resolve():
        raise UserError(f"--output {path} is the source weights file; choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "safetensors":
            save_generator(model, spec, path)
            return ExportResult(path, spec, ())
        upscaler = UnitRangeUpscaler(model).eval()
        # Written beside the target and renamed: never half a file, never through a planted link.
        with atomic_path(path) as partial:
            checks = (
                export_onnx(upscaler, spec, partial)
                if fmt == "onnx"
                else export_torchscript(upscaler, partial)
            )
    except OSError as error:
        raise UserError(f"--output {path}: cannot be written ({error.strerror or error})") from None
    worst = max(check.max_abs_diff for check in checks)
    if worst > PARITY_TOLERANCE:
        raise ExportError(
            f"{path}: {fmt} output differs from PyTorch by up to {worst:.3g} (> {PARITY_TOLERANCE}); "
            "the file was written but should not be used"
        )
    return ExportResult(path, spec, checks)
