"""SRGAN loss terms. Pure functions and modules; images are in the generator range [-1, 1]."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from srgan_dist.models.vgg import VGGFeatures


def content_loss(sr: torch.Tensor, hr: torch.Tensor, kind: Literal["mse", "l1"] = "mse") -> torch.Tensor:
    """Pixel loss between SR and HR in [-1, 1] (paper: MSE)."""
    if kind == "mse":
        return F.mse_loss(sr, hr)
    if kind == "l1":
        return F.l1_loss(sr, hr)
    raise ValueError(f"content loss must be 'mse' or 'l1', got {kind!r}")


class PerceptualLoss(nn.Module):
    """MSE between rescaled VGG19 features of SR and HR (paper: VGG54, features / 12.75).

    The gradient flows into ``sr`` (only the HR branch runs without autograd). Under autocast the
    VGG runs in the autocast dtype; the features are rescaled and compared in fp32 (a bf16 loss
    would keep 8 bits of mantissa).
    """

    def __init__(self, vgg: VGGFeatures, feature_scale: float = 1 / 12.75) -> None:
        super().__init__()
        self.vgg = vgg
        self.feature_scale = feature_scale

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        sr_features = self.vgg(_to_unit_unclamped(sr))
        with torch.no_grad():
            hr_features = self.vgg(_to_unit_unclamped(hr))
        scale = self.feature_scale
        return F.mse_loss(sr_features.float() * scale, hr_features.float() * scale)


def _to_unit_unclamped(image: torch.Tensor) -> torch.Tensor:
    # Clamping would zero the gradient wherever the generator overshoots; VGG copes with
    # slightly out-of-range input, so only rescale here.
    return (image + 1) / 2


def adversarial_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(G(LR)), as BCE-with-logits against "real"."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_real_loss(real_logits: torch.Tensor) -> torch.Tensor:
    """-log D(HR), averaged over the batch."""
    return F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))


def discriminator_fake_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log(1 - D(G(LR))), averaged over the batch."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


__all__ = [
    "PerceptualLoss",
    "adversarial_generator_loss",
    "content_loss",
    "discriminator_fake_loss",
    "discriminator_real_loss",
]
