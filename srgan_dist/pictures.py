"""Reading and writing the images users hand to ``upscale`` (and listing image folders).

``evaluate`` and training validation read images otherwise, both through
``srgan_dist.data.scoring.read_rgb8``: flattened to 8-bit RGB as training data is.

Every input becomes an :class:`Picture`: colour as float32 HxWx3 RGB in [0, 1], an optional
float32 HxW alpha in [0, 1], and what is needed to write the result back in kind (grayscale
stays grayscale, 16-bit stays 16-bit, alpha stays). EXIF orientation is applied on read, so the
output is upright and carries no orientation tag. Palette images become RGB (RGBA when the
palette has transparency); CMYK/YCbCr/LAB become RGB through Pillow.

Pillow reads 16-bit PNG/TIFF grayscale at full depth (modes ``I;16*``, ``I``); it reduces 16-bit
*colour* files to 8 bits on open, so those come out 8-bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

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


def read_picture(path: str | Path) -> Picture:
    """Read ``path`` upright (EXIF orientation applied); raise :class:`ImageReadError` if unreadable."""
    path = Path(path)
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # OSError covers missing, unidentified and truncated files; Pillow's plugins raise
        # ValueError/SyntaxError for some malformed headers.
        raise ImageReadError(f"{path}: not a readable image ({error})") from error
    return picture_from_pil(image)


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
    """Write ``picture`` as PNG at ``path`` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture_to_pil(picture).save(path, format="PNG")
    return path
