"""One way to score an image, shared by ``srgan-dist evaluate`` and validation during training.

- images are read by ``pictures.read_rgb8``: uint8 HxWx3 RGB by the training-data rules
  (``scan.CONVERSION_RULES``): alpha composited over white, grayscale as R = G = B, palettes
  expanded, 16-bit reduced to 8 bits, EXIF orientation applied.
- ``reference_pair``: (LR, HR) of an HR image: HR cropped bottom/right to a multiple of the
  scale, LR its reference bicubic downscale (``resize.bicubic_downscale``).
- ``score_y``: PSNR/SSIM on Y (BT.601), ``crop_border = scale``, of an 8-bit image against HR.
  The model's output (quantised to 8 bits, as a saved PNG) and the bicubic baseline
  (``resize.bicubic_upscale`` of the LR) are both scored by it.

Alpha is composited over white because that is what the model trains on: ``scan_images``
rewrites every validation and training image with an alpha channel that way before any loader
reads it. Scoring the same photo with its alpha dropped (the colour under transparent pixels,
often arbitrary) would judge the model on pixels it never sees, and would make an RGBA photo
score differently in ``evaluate`` and in training validation.

This lives in ``srgan_dist.data`` because ``build_val_set`` (imported by the package) uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from srgan_dist.data.resize import bicubic_downscale, crop_to_multiple
from srgan_dist.metrics import psnr_y, ssim_y


@dataclass(frozen=True)
class Scores:
    """PSNR (dB) and SSIM on Y, border = scale, of one image against its HR."""

    psnr: float
    ssim: float


def min_scoring_side(scale: int) -> int:
    """The smallest HR side that can be scored: SSIM's 11x11 window needs 11 px left after
    cropping ``scale`` px from each border, and the LR image at least 4 px."""
    return max(scale * 4, 11 + 2 * scale)


def reference_pair(hr_HWC: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(LR, HR) uint8: HR cropped bottom/right to a multiple of ``scale``, LR its bicubic downscale."""
    hr_HWC = crop_to_multiple(hr_HWC, scale)
    return bicubic_downscale(hr_HWC, scale), hr_HWC


def score_y(image_HWC: np.ndarray, hr_HWC: np.ndarray, scale: int) -> Scores:
    """PSNR/SSIM on Y of uint8 ``image_HWC`` (model output or bicubic) against uint8 ``hr_HWC``."""
    return Scores(psnr=psnr_y(image_HWC, hr_HWC, scale), ssim=ssim_y(image_HWC, hr_HWC, scale))
