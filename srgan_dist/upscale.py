"""``upscale``'s files: which inputs, which result names, and writing them safely.

    srgan-dist upscale --weights runs/demo --input photos/ --output upscaled/ [--tile 192] [--overlap 32]

Each input becomes ``<output>/<stem>.png`` in the input's kind (``srgan_dist/pictures.py``),
upscaled by the tiling engine (``srgan_dist/infer.py``). Every result is written to a fresh
temporary file and renamed into place (``srgan_dist/atomic.py``): a symlink planted in the output
folder is replaced, never followed, so ``--overwrite`` cannot write outside the folder. Long work
is never silent: a terminal gets progress bars, anything else a log line every
``PROGRESS_EVERY_S`` seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from srgan_dist.errors import UserError
from srgan_dist.generator_io import GeneratorSpec, load_generator
from srgan_dist.infer import DEFAULT_TILING, Tiling, count_tiles, resolve_device, upscale_rgb
from srgan_dist.models import Generator
from srgan_dist.pictures import (
    ImageReadError,
    Picture,
    image_files,
    read_picture,
    resize_alpha,
    with_pixels,
    write_png,
)

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0
"""Without progress bars, how often long work (many images, or one image of many tiles) logs
how far it got."""


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
    existing = [path for path in outputs if path.exists() or path.is_symlink()]
    if existing and not overwrite:
        shown = ", ".join(map(str, existing[:5])) + (
            f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        )
        raise UserError(
            f"--output {output_dir}: {len(existing)} result(s) already exist: {shown}; pass --overwrite "
            "to replace them (nothing was written)"
        )


def make_output_folder(output_dir: Path) -> None:
    """Create ``--output`` (and its parents), or raise a one-line :class:`UserError` naming it."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"--output {output_dir}: cannot create this folder ({error.strerror or error})"
        ) from error


def write_result(picture: Picture, target: Path) -> Path:
    """:func:`pictures.write_png` (a symlink at ``target`` is replaced, not followed); an OS error
    is one line naming the file."""
    try:
        return write_png(picture, target)
    except OSError as error:
        raise UserError(f"--output: cannot write {target} ({error.strerror or error})") from error


class Progress:
    """Counts done work out of ``total``: a tqdm bar when ``bars``, else a log line at most every
    ``PROGRESS_EVERY_S`` seconds, so work that runs for long without a terminal is never silent."""

    def __init__(self, total: int, *, label: str, unit: str, bars: bool, leave: bool = False) -> None:
        from tqdm import tqdm

        self.total, self.label, self.unit = total, label, unit
        self.done = 0
        self._bar = tqdm(total=total, desc=label, unit=unit, leave=leave) if bars else None
        self._last_line = time.monotonic()

    def update(self, count: int = 1) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
            return
        now = time.monotonic()
        if self.done < self.total and now - self._last_line >= PROGRESS_EVERY_S:
            log.info("%s: %d/%d %ss done", self.label, self.done, self.total, self.unit)
            self._last_line = now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


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
    ``progress=None`` shows progress bars only on a terminal (log lines otherwise).
    """
    torch_device = resolve_device(device)
    output_dir = Path(output_dir)
    outputs = output_paths(inputs, output_dir)
    check_outputs(outputs, output_dir, overwrite)
    model, spec = load_generator(weights, stage)
    model.to(torch_device)
    log.info(
        "generator %s (x%d, %d blocks, %d channels, norm=%s) on %s; tile %s, overlap %d, batch %d",
        spec.stage or "?", spec.scale, spec.num_blocks, spec.channels, spec.norm, torch_device,
        tiling.tile or "off", tiling.overlap, tiling.batch,
    )  # fmt: skip
    make_output_folder(output_dir)
    report = UpscaleReport(spec)
    bars = sys.stderr.isatty() if progress is None else progress
    images = Progress(len(inputs), label="images", unit="image", bars=bars, leave=True)
    for source, target in zip(inputs, outputs, strict=True):
        try:
            picture = read_picture(source)
        except ImageReadError as error:
            log.error("skipping %s", error)
            report.failed.append((source, str(error)))
        else:
            height, width = picture.rgb.shape[:2]
            tiles = Progress(count_tiles(height, width, tiling), label=source.name, unit="tile", bars=bars)
            try:
                result = upscale_picture(model, picture, tiling, torch_device, tiles.update)
            finally:
                tiles.close()
            report.written.append(write_result(result, target))
        images.update()
    images.close()
    return report
