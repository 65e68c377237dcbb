"""The reference bicubic resize (PIL, antialiased) that defines "LR" in srgan-dist.

Training makes LR from HR crops with DALI's antialiased cubic resize, which stays within a grey
level of this (see ``srgan_dist.data`` tests); evaluation and validation use this directly. PIL's
BICUBIC (Keys a = -0.5) with antialiasing on downscale is the de-facto standard of SR code outside
MATLAB; MATLAB's ``imresize`` differs from it by well under one grey level on average.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def crop_to_multiple(image_HWC: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right edges so height and width are multiples of ``scale``."""
    height, width = image_HWC.shape[:2]
    return image_HWC[: height - height % scale, : width - width % scale]


def bicubic_downscale(hr_HWC: np.ndarray, scale: int) -> np.ndarray:
    """uint8 HxWx3 → uint8 (H/scale)x(W/scale)x3; H and W must be multiples of ``scale``."""
    height, width = hr_HWC.shape[:2]
    if height % scale or width % scale:
        raise ValueError(f"image {width}x{height} is not a multiple of scale {scale}; crop it first")
    image = Image.fromarray(hr_HWC)
    return np.asarray(image.resize((width // scale, height // scale), Image.Resampling.BICUBIC))


def bicubic_upscale(lr_HWC: np.ndarray, scale: int) -> np.ndarray:
    """uint8 hxwx3 → uint8 (h*scale)x(w*scale)x3: the bicubic baseline SR is compared against."""
    height, width = lr_HWC.shape[:2]
    image = Image.fromarray(lr_HWC)
    return np.asarray(image.resize((width * scale, height * scale), Image.Resampling.BICUBIC))
