"""Tiled inference with a trained generator: any image size, only the current tiles on the device.

The engine behind ``upscale`` (``srgan_dist/upscale.py``, the file handling) and ``evaluate``:
:class:`Tiling` (the ``--tile`` / ``--overlap`` / ``--batch`` options), :func:`upscale_rgb`
(float RGB in, float RGB out) and :func:`resolve_device` (``--device``).

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
- A tile is at least ``MIN_TILE`` pixels (or 0, untiled): each tile costs one forward pass, and
  in a smaller one most output pixels sit beside a zero-padded edge.

Only ``batch`` tiles are on the device at a time; the image stays on the CPU and the output is
accumulated there as float32 (4 bytes per output sample).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from srgan_dist.errors import UserError
from srgan_dist.models import Generator, generator_output_to_unit
from srgan_dist.pixels import to_array, to_tensor

DEFAULT_TILE = 192
DEFAULT_OVERLAP = 32
MIN_TILE = 16
"""Smallest tile side (LR pixels) but 0: one forward pass per tile, and below this most output
pixels of a tile sit beside a zero-padded edge (a 512x512 image is 1,024 passes at 16, 262,144
at 1)."""


@dataclass(frozen=True, kw_only=True)
class Tiling:
    """How an image is cut into tiles for the generator (sizes in LR pixels)."""

    tile: int = DEFAULT_TILE
    """Tile side, at least ``MIN_TILE``; 0 runs the whole image at once (untiled)."""
    overlap: int = DEFAULT_OVERLAP
    """Pixels shared by neighbouring tiles, blended as the module docstring says; at most tile/2."""
    batch: int = 1
    """Tiles per forward pass (all tiles have one shape, so they stack)."""

    def __post_init__(self) -> None:
        if self.tile < 0 or 0 < self.tile < MIN_TILE:
            raise UserError(f"--tile must be 0 (untiled) or at least {MIN_TILE} LR pixels, got {self.tile}")
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
