"""PSNR and SSIM on the Y channel, as SR papers report them.

Y is BT.601 luma with MATLAB ``rgb2ycbcr`` constants (Y in [16, 235] for RGB in [0, 1]):
``Y = 16 + (65.481 R + 128.553 G + 24.966 B)``; ``crop_border`` pixels are removed from every
side first (the convention is ``crop_border = scale``). SSIM uses the standard 11x11 Gaussian
window with sigma 1.5 over the "valid" region (Wang et al. 2004; as BasicSR and MATLAB do).

Inputs are uint8 HxWx3 arrays (RGB) or float tensors in [0, 1] shaped 3xHxW or 1x3xHxW.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

ImageLike = np.ndarray | torch.Tensor


def to_y(image: ImageLike) -> np.ndarray:
    """Y channel in [16, 235] (float64, HxW) of an RGB image (see module docstring for formats)."""
    if isinstance(image, torch.Tensor):
        if not image.is_floating_point():  # a uint8 tensor would be read as 0..255 "in [0, 1]"
            raise ValueError(f"tensor images must be float in [0, 1], got {image.dtype}")
        tensor = image.detach().to("cpu", torch.float64)
        if tensor.ndim == 4:
            if tensor.shape[0] != 1:
                raise ValueError(f"expected one image, got a batch of shape {tuple(tensor.shape)}")
            tensor = tensor[0]
        if tensor.ndim != 3 or tensor.shape[0] != 3:
            raise ValueError(f"expected a 3xHxW tensor, got shape {tuple(tensor.shape)}")
        rgb = tensor.permute(1, 2, 0).numpy()
    else:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 array, got shape {array.shape}")
        if array.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8, got {array.dtype}")
        rgb = array.astype(np.float64) / 255.0
    return 16.0 + rgb @ np.array([65.481, 128.553, 24.966])


def _prepare(sr: ImageLike, hr: ImageLike, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    sr_y, hr_y = to_y(sr), to_y(hr)
    if sr_y.shape != hr_y.shape:
        raise ValueError(f"SR {sr_y.shape} and HR {hr_y.shape} differ in size")
    if crop_border < 0 or 2 * crop_border >= min(sr_y.shape):
        raise ValueError(f"crop_border={crop_border} does not fit an image of size {sr_y.shape}")
    if crop_border:
        sr_y = sr_y[crop_border:-crop_border, crop_border:-crop_border]
        hr_y = hr_y[crop_border:-crop_border, crop_border:-crop_border]
    return sr_y, hr_y


def psnr_y(sr: ImageLike, hr: ImageLike, crop_border: int = 0) -> float:
    """PSNR in dB on Y (peak 255). Identical images give ``inf``."""
    sr_y, hr_y = _prepare(sr, hr, crop_border)
    mse = float(np.mean((sr_y - hr_y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] @ g[None, :]).view(1, 1, size, size)


def ssim_y(sr: ImageLike, hr: ImageLike, crop_border: int = 0) -> float:
    """SSIM on Y (data range 255, K1 = 0.01, K2 = 0.03, 11x11 Gaussian window, sigma 1.5)."""
    sr_y, hr_y = _prepare(sr, hr, crop_border)
    if min(sr_y.shape) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {sr_y.shape}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    window = _gaussian_window()
    x = torch.from_numpy(sr_y)[None, None]
    y = torch.from_numpy(hr_y)[None, None]
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x**2
    var_y = F.conv2d(y * y, window) - mu_y**2
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())
