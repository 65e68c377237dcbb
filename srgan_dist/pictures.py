"""The project's one image decoder, and the writer of ``upscale``'s results.

Every image file the project reads is opened here, fully decoded with EXIF orientation applied
(so results are upright and carry no orientation tag), and given one of two shapes:

- :func:`load_rgb` / :func:`read_rgb8`: uint8 HxWx3 RGB flattened by the training-data rules
  (``srgan_dist.data.scan.CONVERSION_RULES``): grayscale as R = G = B, palettes expanded, alpha
  composited over white, 16-bit reduced to 8 bits (value / 257, rounded), other colour spaces
  through Pillow. The scanner's conversions, both loaders, ``prepare``, training validation and
  ``evaluate`` all read images this way, so a photo is the same pixels everywhere.
- :func:`read_picture`: a :class:`Picture` for ``upscale``: colour as float32 HxWx3 RGB in
  [0, 1], an optional float32 HxW alpha in [0, 1], and what is needed to write the result back
  in kind (grayscale stays grayscale, 16-bit stays 16-bit, alpha stays). Palette images become
  RGB (RGBA when the palette has transparency); CMYK/YCbCr/LAB become RGB through Pillow.

Pillow reads 16-bit PNG/TIFF grayscale at full depth (modes ``I;16*``, ``I``); it reduces 16-bit
*colour* files to 8 bits on open, so those come out 8-bit.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from srgan_dist import storage
from srgan_dist.atomic import atomic_path
from srgan_dist.errors import UserError
from srgan_dist.pixels import quantize

SIXTEEN_BIT_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
GRAY_MODES = ("1", "L", "LA", "La")
# Pillow's own luma weights (ITU-R 601-2), used when a grayscale result is written back.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageReadError(UserError):
    """A file that is not a readable image; the message names it."""


@dataclass(frozen=True)
class Picture:
    """An image ready for the generator, plus how to write the result like the input."""

    rgb: np.ndarray
    """float32 HxWx3 RGB in [0, 1] (grayscale inputs are repeated into three channels)."""
    alpha: np.ndarray | None
    """float32 HxW in [0, 1], or None when the input has no transparency."""
    grayscale: bool
    """Write the result as one channel (Pillow's luma of the RGB result)."""
    bit_depth: int
    """8 or 16: bits per channel of the file to write."""


def image_files(folder: Path) -> list[Path]:
    """Image files (by extension Pillow knows) directly in ``folder``, sorted; hidden files skipped."""
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in extensions
    )


@contextlib.contextmanager
def _named_read_errors(path: str | Path) -> Iterator[None]:
    """Turn Pillow's decode errors into one :class:`ImageReadError` naming the file."""
    try:
        yield
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # OSError covers missing, unidentified and truncated files; Pillow's plugins raise
        # ValueError/SyntaxError for some malformed headers.
        raise ImageReadError(f"{path}: not a readable image ({error})") from error


def decode_upright(path: str | Path) -> Image.Image:
    """``path`` (a file, or an ``s3://`` / ``gs://`` object read whole) fully decoded with its
    EXIF orientation applied; Pillow's and the storage's errors pass through."""
    source = io.BytesIO(storage.read_bytes(str(path))) if storage.is_uri(path) else path
    with Image.open(source) as opened:
        image = ImageOps.exif_transpose(opened)
        image.load()
    return image


def read_picture(path: str | Path) -> Picture:
    """Read ``path`` upright (EXIF orientation applied); raise :class:`ImageReadError` if unreadable."""
    with _named_read_errors(path):
        image = decode_upright(path)
    return picture_from_pil(image)


def load_rgb(path: str | Path) -> np.ndarray:
    """uint8 HxWx3 RGB of ``path`` by the training-data rules (module docstring), upright.

    Pillow's errors pass through, so the scanner can word its own reason and an I/O error in a
    training loader stays one (a restart may get past it). The pixel limit is the scanner's
    (``data.max_pixels``), so Pillow's decompression-bomb warning is silenced here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return rgb8_from_pil(decode_upright(path))


def read_rgb8(path: str | Path) -> np.ndarray:
    """:func:`load_rgb`, raising :class:`ImageReadError` naming the file when it is not a readable image."""
    with _named_read_errors(path):
        return load_rgb(path)


def rgb8_from_pil(image: Image.Image) -> np.ndarray:
    """uint8 HxWx3 RGB of a Pillow image of any mode, by the training-data rules."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(values[..., None], 3, axis=2)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))


def picture_from_pil(image: Image.Image) -> Picture:
    """Convert a Pillow image of any common mode (see module docstring)."""
    mode = image.mode
    if mode in SIXTEEN_BIT_GRAY_MODES:
        gray = np.asarray(image, dtype=np.float32) / 65535.0
        return Picture(_repeat_gray(np.clip(gray, 0.0, 1.0)), None, grayscale=True, bit_depth=16)
    if mode == "F":
        raise ImageReadError(f"32-bit float images (mode F) are not supported: {image!r}")
    has_alpha = mode in ALPHA_MODES or "transparency" in image.info
    grayscale = mode in GRAY_MODES
    if grayscale:
        converted = image.convert("LA" if has_alpha else "L")
        values = np.asarray(converted, dtype=np.float32) / 255.0
        if has_alpha:
            return Picture(_repeat_gray(values[..., 0]), values[..., 1].copy(), grayscale=True, bit_depth=8)
        return Picture(_repeat_gray(values), None, grayscale=True, bit_depth=8)
    converted = image.convert("RGBA" if has_alpha else "RGB")
    values = np.asarray(converted, dtype=np.float32) / 255.0
    if has_alpha:
        return Picture(np.ascontiguousarray(values[..., :3]), values[..., 3].copy(), False, 8)
    return Picture(values, None, grayscale=False, bit_depth=8)


def _repeat_gray(gray_HW: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray_HW[..., None], 3, axis=2))


def resize_alpha(alpha_HW: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic (Pillow, float) resize of an alpha plane to ``size`` = (width, height), clipped to [0, 1]."""
    resized = Image.fromarray(alpha_HW.astype(np.float32)).resize(size, Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def with_pixels(picture: Picture, rgb_HWC: np.ndarray, alpha_HW: np.ndarray | None) -> Picture:
    """The same kind of picture (grayscale, depth) with new pixels."""
    return replace(picture, rgb=rgb_HWC, alpha=alpha_HW)


def picture_to_pil(picture: Picture) -> Image.Image:
    """Pillow image in the input's kind: L / LA / RGB / RGBA, or I;16 for 16-bit grayscale."""
    if picture.grayscale:
        gray = picture.rgb @ LUMA_WEIGHTS
        if picture.bit_depth == 16:
            # Pillow has no 16-bit LA: alpha on a 16-bit grayscale input is impossible on read.
            return Image.fromarray(quantize(gray, 16))
        if picture.alpha is not None:
            return Image.fromarray(quantize(np.stack([gray, picture.alpha], axis=2), 8))
        return Image.fromarray(quantize(gray, 8))
    if picture.alpha is not None:
        rgba = np.concatenate([picture.rgb, picture.alpha[..., None]], axis=2)
        return Image.fromarray(quantize(rgba, 8))
    return Image.fromarray(quantize(picture.rgb, 8))


def write_png(picture: Picture, path: str | Path) -> Path:
    """Write ``picture`` as PNG at ``path`` through a fresh temporary file renamed over it, so a
    symlink planted at ``path`` is replaced, never followed (``srgan_dist/atomic.py``)."""
    path = Path(path)
    with atomic_path(path) as partial:
        picture_to_pil(picture).save(partial, format="PNG")
    return path
