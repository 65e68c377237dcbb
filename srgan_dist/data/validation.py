"""Validation images: whole photos, read, cropped and downscaled as ``evaluate`` does (``scoring``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from srgan_dist.data.scoring import reference_pair
from srgan_dist.pictures import read_rgb8
from srgan_dist.pixels import to_tensor


@dataclass
class ValImage:
    """One validation pair, batch of 1, on the worker's device; values are multiples of 1/255."""

    lr: torch.Tensor
    """1x3xhxw float32 in [0, 1]: the 8-bit bicubic downscale of ``hr``."""
    hr: torch.Tensor
    """1x3xHxW float32 in [0, 1], H and W multiples of the scale."""


def build_val_set(files: list[str], *, scale: int, device: torch.device) -> list[ValImage]:
    """Whole-image (LR, HR) pairs from ``files``, sorted by path.

    Each pair is ``scoring.reference_pair`` of ``pictures.read_rgb8``: LR is
    ``resize.bicubic_downscale`` (PIL BICUBIC, antialiased, 8-bit), which the DALI training
    resize matches within a fraction of a grey level, and which ``evaluate`` uses too.
    """
    device = torch.device(device)
    pairs = []
    for path in sorted(files):
        lr, hr = reference_pair(read_rgb8(path), scale)
        pairs.append(ValImage(to_tensor(lr, device), to_tensor(hr, device)))
    return pairs
