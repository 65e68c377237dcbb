"""SRGAN discriminator (Ledig et al. 2017, Fig. 4), returning one logit per image.

Eight 3x3 convs go 64 → 512 channels; every second conv has stride 2 and halves the size;
LeakyReLU(0.2) throughout; BatchNorm on every conv except the first. An adaptive average pool to
6x6 sits before the dense layers, so any HR patch of at least 16 px works: at the paper's 96 px
the convs already give 6x6 and the pool is the identity.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

POOLED_SIZE = 6


class Discriminator(nn.Module):
    """Image in [-1, 1], shape (B, 3, H, W) with H, W >= 16 → logits of shape (B, 1)."""

    def __init__(self, channels: int = 64, norm: Literal["batch", "none"] = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), nn.LeakyReLU(0.2)]
        in_channels = channels
        # (out_channels, stride) for convs 2..8: 64/2, 128/1, 128/2, 256/1, 256/2, 512/1, 512/2.
        for index in range(1, 8):
            out_channels = channels * 2 ** (index // 2)
            stride = 2 if index % 2 == 1 else 1
            layers.append(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.LeakyReLU(0.2))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(POOLED_SIZE)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * POOLED_SIZE * POOLED_SIZE, 1024),
            nn.LeakyReLU(0.2),
            nn.Linear(1024, 1),
        )

    def forward(self, image_BCHW: torch.Tensor) -> torch.Tensor:
        if min(image_BCHW.shape[-2:]) < 16:
            raise ValueError(f"discriminator needs patches of at least 16 px, got {tuple(image_BCHW.shape)}")
        return self.classifier(self.pool(self.features(image_BCHW)))
