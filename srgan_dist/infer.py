"""Tiled upscaling with a trained generator: any image size, only the current tiles on the device.

    srgan-dist upscale --weights runs/demo --input photos/ --output upscaled/ [--tile 192] [--overlap 32]

How tiles are laid out and blended (all sizes in LR pixels):

- Along each axis: the fewest tiles of at most ``tile`` pixels that overlap by at least
  ``overlap``, all of one size, spread evenly from edge to edge. Every tile has the same shape,
  so several can run as one batch (``batch``).
- The generator zero-pads every convolution, so output near a tile edge that is not an image
  edge differs from what the whole image would give. Each tile's output is weighted, along each
  axis and only on sides facing another tile, by 0 over the first ``overlap/4`` pixels (the most
  padding-affected, dropped), then a linear ramp 0 → 1 over the next ``overlap/2``, then 1. Two
  neighbours' weights add up to 1 across the overlap, so the blend is seamless; the sum of all
  weights is normalised anyway (it factorises into a row and a column sum, so no extra
  full-size buffer is needed).
- Default overlap 32: every output pixel that a tile contributes to has at least 8 LR pixels of
  real context on that side and ramps are 16 pixels wide. A trained SRResNet's effective
  receptive field is far smaller than its theoretical one (about 40 LR pixels for 16 blocks), so
  this keeps tiled output within about a grey level of untiled (see tests/test_infer.py).

Only ``batch`` tiles are on the device at a time; the image stays on the CPU and the output is
accumulated there as float32 (4 bytes per output sample).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from srgan_dist.errors import UserError
from srgan_dist.generator_io import GeneratorSpec, load_generator
from srgan_dist.models import Generator, generator_output_to_unit
from srgan_dist.pictures import ImageReadError, Picture, image_files, read_picture, resize_alpha, with_pixels
from srgan_dist.pictures import write_png as write_picture_png
from srgan_dist.pixels import to_array, to_tensor

log = logging.getLogger(__name__)

DEFAULT_TILE = 192
DEFAULT_OVERLAP = 32


@dataclass(frozen=True, kw_only=True)
class Tiling:
    """How an image is cut into tiles for the generator (sizes in LR pixels)."""

    tile: int = DEFAULT_TILE
    """Tile side; 0 runs the whole image at once (untiled)."""
    overlap: int = DEFAULT_OVERLAP
    """Pixels shared by neighbouring tiles, blended as the module docstring says; at most tile/2."""
    batch: int = 1
    """Tiles per forward pass (all tiles have one shape, so they stack)."""

    def __post_init__(self) -> None:
        if self.tile < 0:
            raise UserError(f"--tile must be >= 0 (0 = untiled), got {self.tile}")
        if self.overlap < 0:
            raise UserError(f"--overlap must be >= 0, got {self.overlap}")
        if self.tile and 2 * self.overlap > self.tile:
            raise UserError(f"--overlap {self.overlap} must be at most half of --tile {self.tile}")
        if self.batch < 1:
            raise UserError(f"--batch must be >= 1, got {self.batch}")


DEFAULT_TILING = Tiling()


def resolve_device(name: str | None) -> torch.device:
    """``None`` → CUDA when available, else CPU. ``cuda[:N]`` is checked against the GPUs this
    process sees, so a missing GPU or a wrong index is a clear error up front, not a CUDA error
    at the first kernel."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", name)
    if match is None:
        raise UserError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(
            f"--device {name}: CUDA is not available (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda}, sees no GPU); use --device cpu"
        )
    count = torch.cuda.device_count()
    if match.group(1) is not None and int(match.group(1)) >= count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        raise UserError(
            f"--device {name}: this process sees {count} GPU(s){where}, so the index must be "
            f"below {count}: use --device cuda:0" + (f" … cuda:{count - 1}" if count > 1 else "")
        )
    return torch.device(name)


def tile_layout(length: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """Tile size and start offsets along one axis: the fewest tiles of at most ``tile`` pixels that
    overlap by at least ``overlap``, all of one size and evenly spread from edge to edge (so no
    tile is mostly a repeat of its neighbour, as a last tile pushed back to the edge would be)."""
    if tile == 0 or length <= tile:
        return length, [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (count - 1) * overlap) / count)
    return size, [round(index * (length - size) / (count - 1)) for index in range(count)]


def _ramp(distance: np.ndarray, overlap: int) -> np.ndarray:
    """0 for the first overlap/4 pixels from a tile edge, linear to 1 over the next overlap/2."""
    return np.clip((distance - overlap / 4) / (overlap / 2), 0.0, 1.0)


def axis_weights(start: int, size: int, length: int, overlap: int, scale: int) -> np.ndarray:
    """Blend weights of one tile's output pixels along one axis (float32, ``size * scale``)."""
    centres = (np.arange(size * scale, dtype=np.float64) + 0.5) / scale  # in LR pixels from the start
    weights = np.ones(size * scale)
    if overlap:
        if start > 0:
            weights *= _ramp(centres, overlap)
        if start + size < length:
            weights *= _ramp(size - centres, overlap)
    return weights.astype(np.float32)


def _axis_plan(length: int, tiling: Tiling, scale: int) -> tuple[int, dict[int, np.ndarray], np.ndarray]:
    """Tile size, per-start weights and their per-pixel sum along one axis."""
    size, starts = tile_layout(length, tiling.tile, tiling.overlap)
    weights = {start: axis_weights(start, size, length, tiling.overlap, scale) for start in starts}
    total = np.zeros(length * scale, dtype=np.float32)
    for start, w in weights.items():
        total[start * scale : (start + size) * scale] += w
    assert total.min() > 0, "every output pixel must be covered by a tile with positive weight"
    return size, weights, total


def count_tiles(height: int, width: int, tiling: Tiling) -> int:
    """How many tiles an ``height`` x ``width`` LR image is cut into."""
    rows = tile_layout(height, tiling.tile, tiling.overlap)[1]
    columns = tile_layout(width, tiling.tile, tiling.overlap)[1]
    return len(rows) * len(columns)


def _chunks(items: list, size: int) -> Iterator[list]:
    for index in range(0, len(items), size):
        yield items[index : index + size]


def upscale_rgb(
    model: Generator,
    rgb_HWC: np.ndarray,
    tiling: Tiling = DEFAULT_TILING,
    device: torch.device | str = "cpu",
    on_tiles: Callable[[int], None] | None = None,
) -> np.ndarray:
    """float32 hxwx3 RGB in [0, 1] → float32 (h*scale)x(w*scale)x3 in [0, 1], tiled and blended.

    ``model`` must already be on ``device`` and in eval mode; ``on_tiles(n)`` is called after each
    batch of ``n`` tiles (for progress bars).
    """
    if rgb_HWC.ndim != 3 or rgb_HWC.shape[2] != 3:
        raise UserError(f"expected an HxWx3 RGB array, got shape {rgb_HWC.shape}")
    scale = model.scale
    height, width = rgb_HWC.shape[:2]
    tile_h, weights_y, total_y = _axis_plan(height, tiling, scale)
    tile_w, weights_x, total_x = _axis_plan(width, tiling, scale)
    lr_CHW = to_tensor(rgb_HWC)[0]
    out_HWC = np.zeros((height * scale, width * scale, 3), dtype=np.float32)
    positions = [(y, x) for y in weights_y for x in weights_x]
    for batch in _chunks(positions, tiling.batch):
        lr_BCHW = torch.stack([lr_CHW[:, y : y + tile_h, x : x + tile_w] for y, x in batch])
        with torch.inference_mode():
            sr_BCHW = generator_output_to_unit(model(lr_BCHW.to(device)))
        sr_BHWC = to_array(sr_BCHW)
        for (y, x), sr_HWC in zip(batch, sr_BHWC, strict=True):
            weight_HW = weights_y[y][:, None] * weights_x[x][None, :]
            out_HWC[y * scale : (y + tile_h) * scale, x * scale : (x + tile_w) * scale] += (
                sr_HWC * weight_HW[..., None]
            )
        if on_tiles is not None:
            on_tiles(len(batch))
    out_HWC /= total_y[:, None, None]
    out_HWC /= total_x[None, :, None]
    return out_HWC


def upscale_picture(
    model: Generator,
    picture: Picture,
    tiling: Tiling = DEFAULT_TILING,
    device: torch.device | str = "cpu",
    on_tiles: Callable[[int], None] | None = None,
) -> Picture:
    """Upscale colour with the generator and alpha (if any) with Pillow bicubic."""
    rgb = upscale_rgb(model, picture.rgb, tiling, device, on_tiles)
    alpha = None
    if picture.alpha is not None:
        alpha = resize_alpha(picture.alpha, (rgb.shape[1], rgb.shape[0]))
    return with_pixels(picture, rgb, alpha)


def collect_inputs(input_path: str | Path) -> list[Path]:
    """``--input``: one file (any extension), or the image files directly inside a folder."""
    input_path = Path(input_path)
    if input_path.is_file():
        return [input_path]
    if not input_path.is_dir():
        raise UserError(f"--input {input_path}: no such file or folder")
    files = image_files(input_path)
    if not files:
        raise UserError(f"--input {input_path}: no image files in this folder")
    return files


def output_paths(inputs: list[Path], output_dir: Path) -> list[Path]:
    """``<output_dir>/<stem>.png`` per input; clashing stems or overwriting an input is an error."""
    outputs = [output_dir / f"{path.stem}.png" for path in inputs]
    seen: dict[Path, Path] = {}
    for source, target in zip(inputs, outputs, strict=True):
        if target in seen:
            raise UserError(f"{source} and {seen[target]} would both be written to {target}; rename one")
        if target.resolve() == source.resolve():
            raise UserError(f"{target} would overwrite its own input; choose another --output folder")
        seen[target] = source
    return outputs


def check_outputs(outputs: list[Path], output_dir: Path, overwrite: bool) -> None:
    """``--output`` must be (or become) a folder, and no result may replace a file unless
    ``overwrite``: checked before any weights are loaded or images read."""
    for path in (output_dir, *output_dir.parents):
        if path.exists() and not path.is_dir():
            raise UserError(f"--output {output_dir}: {path} is a file, not a folder")
    existing = [path for path in outputs if path.exists()]
    if existing and not overwrite:
        shown = ", ".join(map(str, existing[:5])) + (
            f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        )
        raise UserError(
            f"--output {output_dir}: {len(existing)} result(s) already exist: {shown}; pass --overwrite "
            "to replace them (nothing was written)"
        )


@dataclass
class UpscaleReport:
    """What an ``upscale`` run wrote, and which inputs it skipped and why."""

    spec: GeneratorSpec
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def upscale_files(
    weights: str | Path,
    inputs: list[Path],
    output_dir: str | Path,
    *,
    tiling: Tiling = DEFAULT_TILING,
    device: str | None = None,
    stage: str | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> UpscaleReport:
    """Upscale each input to ``<output_dir>/<stem>.png``; unreadable inputs are skipped and listed.

    Existing results are an error (naming them, before any work) unless ``overwrite``.
    ``progress=None`` shows tqdm bars only on a terminal.
    """
    from tqdm import tqdm

    torch_device = resolve_device(device)
    outputs = output_paths(inputs, Path(output_dir))
    check_outputs(outputs, Path(output_dir), overwrite)
    model, spec = load_generator(weights, stage)
    model.to(torch_device)
    log.info(
        "generator %s (x%d, %d blocks, %d channels, norm=%s) on %s; tile %s, overlap %d, batch %d",
        spec.stage or "?", spec.scale, spec.num_blocks, spec.channels, spec.norm, torch_device,
        tiling.tile or "off", tiling.overlap, tiling.batch,
    )  # fmt: skip
    report = UpscaleReport(spec)
    disable = None if progress is None else not progress
    for source, target in tqdm(
        list(zip(inputs, outputs, strict=True)), desc="images", unit="img", disable=disable
    ):
        try:
            picture = read_picture(source)
        except ImageReadError as error:
            log.error("skipping %s", error)
            report.failed.append((source, str(error)))
            continue
        height, width = picture.rgb.shape[:2]
        with tqdm(
            total=count_tiles(height, width, tiling), desc=source.name, unit="tile", leave=False,
            disable=disable,
        ) as bar:  # fmt: skip
            result = upscale_picture(model, picture, tiling, torch_device, bar.update)
        report.written.append(write_picture_png(result, target))
    return report
