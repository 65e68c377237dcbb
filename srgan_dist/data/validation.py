"""Validation images: whole photos, HR cropped to a multiple of the scale, LR by reference bicubic."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from srgan_dist.data.resize import bicubic_downscale, crop_to_multiple
from srgan_dist.data.scan import load_rgb


@dataclass
class ValImage:
    """One validation pair, batch of 1, on the worker's device; values are multiples of 1/255."""

    name: str
    """File stem, for logs and image grids."""
    lr: torch.Tensor
    """1x3xhxw float32 in [0, 1]: the 8-bit bicubic downscale of ``hr``."""
    hr: torch.Tensor
    """1x3xHxW float32 in [0, 1], H and W multiples of the scale."""


def _to_tensor(image_HWC: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.array(image_HWC)).permute(2, 0, 1)[None].float().div_(255.0).to(device)


def build_val_set(
    files: list[str], *, scale: int, device: torch.device, max_images: int = 0
) -> list[ValImage]:
    """Whole-image (LR, HR) pairs from ``files`` (sorted; the first ``max_images``, 0 = all).

    LR is ``resize.bicubic_downscale`` (PIL BICUBIC, antialiased, 8-bit), which the DALI training
    resize matches within a fraction of a grey level, and which ``evaluate`` uses too.
    """
    chosen = sorted(files)
    if max_images:
        chosen = chosen[:max_images]
    device = torch.device(device)
    pairs = []
    for path in chosen:
        hr = crop_to_multiple(load_rgb(path), scale)
        pairs.append(
            ValImage(
                Path(path).stem, _to_tensor(bicubic_downscale(hr, scale), device), _to_tensor(hr, device)
            )
        )
    return pairs
