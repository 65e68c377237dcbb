"""SRResNet generator (Ledig et al. 2017, Fig. 4).

Range convention, used everywhere in srgan-dist: the generator takes LR images in [0, 1] and
predicts HR images in [-1, 1] (the paper's convention; content loss is MSE on [-1, 1]). The output
is not squashed by tanh: it is trained towards [-1, 1] and clamped when turned into pixels
(``generator_output_to_unit``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["batch", "none"]
GlobalSkip = Literal["none", "bicubic"]
SCALES = (2, 4, 8)


def _norm(channels: int, norm: Norm) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.Identity()


class ResidualBlock(nn.Module):
    """conv3x3 → norm → PReLU → conv3x3 → norm, plus the identity skip."""

    def __init__(self, channels: int, norm: Norm) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels, norm),
            nn.PReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels, norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """SRResNet: head conv9x9, ``num_blocks`` residual blocks, long skip, sub-pixel upsampling.

    With ``num_blocks=16, channels=64, scale=4, norm="batch"`` it has 1,549,462 parameters.

    ``global_skip="bicubic"`` (not in the paper) adds the bicubic-upsampled input to the output, so
    the network learns only the residual over bicubic (global residual learning, as in VDSR, Kim et
    al. 2016). It has no parameters; the last conv starts at zero, so an untrained model *is*
    bicubic and every step of training improves on it. Short runs (the demo) need this to beat
    bicubic within minutes; the paper's recipe keeps ``"none"``.
    """

    def __init__(
        self,
        num_blocks: int = 16,
        channels: int = 64,
        scale: int = 4,
        norm: Norm = "batch",
        global_skip: GlobalSkip = "none",
    ) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be 2, 4 or 8, got {scale}")
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        if global_skip not in ("none", "bicubic"):
            raise ValueError(f"global_skip must be 'none' or 'bicubic', got {global_skip!r}")
        self.scale = scale
        self.global_skip = global_skip
        self.head = nn.Sequential(nn.Conv2d(3, channels, 9, padding=4), nn.PReLU())
        self.body = nn.Sequential(*[ResidualBlock(channels, norm) for _ in range(num_blocks)])
        self.body_tail = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), _norm(channels, norm))
        upsample: list[nn.Module] = []
        for _ in range(int(math.log2(scale))):
            upsample += [nn.Conv2d(channels, channels * 4, 3, padding=1), nn.PixelShuffle(2), nn.PReLU()]
        self.upsample = nn.Sequential(*upsample)
        self.tail = nn.Conv2d(channels, 3, 9, padding=4)
        if global_skip == "bicubic":
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, lr_BCHW: torch.Tensor) -> torch.Tensor:
        """LR in [0, 1], shape (B, 3, h, w) → SR in [-1, 1] space, shape (B, 3, h*scale, w*scale)."""
        features = self.head(lr_BCHW)
        features = features + self.body_tail(self.body(features))
        sr = self.tail(self.upsample(features))
        if self.global_skip == "bicubic":
            upsampled = F.interpolate(lr_BCHW, scale_factor=self.scale, mode="bicubic", align_corners=False)
            sr = sr + unit_to_generator_range(upsampled)
        return sr


def generator_output_to_unit(sr: torch.Tensor) -> torch.Tensor:
    """Map generator output ([-1, 1] space) to image values in [0, 1], clamped."""
    return ((sr + 1) / 2).clamp(0, 1)


def unit_to_generator_range(image: torch.Tensor) -> torch.Tensor:
    """Map images in [0, 1] to the generator's target range [-1, 1]."""
    return image * 2 - 1
