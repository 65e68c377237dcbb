"""Pixel conversions between image arrays and the generator's tensors: the one set every module uses.

Arrays are HxWx3 RGB, uint8 (0..255) or float in [0, 1]; tensors are float32 Bx3xHxW in [0, 1]
(B = 1 for one image). Going back to 8 bits always rounds to nearest (``quantize``), as a saved
PNG would.
"""

from __future__ import annotations

import numpy as np
import torch


def quantize(values: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """Float [0, 1] → uint8 or uint16 (``bit_depth`` 8 or 16), clipped, rounded to nearest."""
    peak = 255.0 if bit_depth == 8 else 65535.0
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.rint(np.clip(values, 0.0, 1.0) * peak).astype(dtype)


def to_unit(image_HWC: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 → float32 HxWx3 in [0, 1]."""
    if image_HWC.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image_HWC.dtype}")
    return image_HWC.astype(np.float32) / 255.0


def to_tensor(image_HWC: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """HxWx3 uint8 (divided by 255) or float in [0, 1] → float32 1x3xHxW in [0, 1] on ``device``."""
    if image_HWC.ndim != 3 or image_HWC.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB array, got shape {image_HWC.shape}")
    tensor = torch.from_numpy(np.array(image_HWC)).permute(2, 0, 1)[None]  # a copy: arrays may be read-only
    if image_HWC.dtype == np.uint8:
        return tensor.float().div_(255.0).to(device)
    if not np.issubdtype(image_HWC.dtype, np.floating):
        raise ValueError(f"expected a uint8 or float image, got {image_HWC.dtype}")
    return tensor.to(device, torch.float32)


def to_array(images_BCHW: torch.Tensor) -> np.ndarray:
    """Float Bx3xHxW tensor → float32 BxHxWx3 C-contiguous array on the CPU (values unchanged).

    Contiguous, because the metrics' RGB → Y product rounds differently (last bits) on a
    channel-first memory layout, and scores should not depend on where an image came from.
    """
    return images_BCHW.detach().permute(0, 2, 3, 1).float().contiguous().cpu().numpy()


def to_uint8(image_1CHW: torch.Tensor) -> np.ndarray:
    """Float 1x3xHxW tensor in [0, 1] → uint8 HxWx3 (rounded to nearest)."""
    if image_1CHW.ndim != 4 or image_1CHW.shape[0] != 1:
        raise ValueError(f"expected one 1x3xHxW image, got shape {tuple(image_1CHW.shape)}")
    return quantize(to_array(image_1CHW)[0], 8)
