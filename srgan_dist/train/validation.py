"""Validation during training: PSNR/SSIM of the model and of bicubic, plus an image grid."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from srgan_dist.data.resize import bicubic_upscale
from srgan_dist.data.scoring import Scores, score_y
from srgan_dist.models import generator_output_to_unit
from srgan_dist.pixels import to_tensor, to_uint8


@contextlib.contextmanager
def cudnn_autotune_off() -> Iterator[None]:
    """``torch.backends.cudnn.benchmark`` off in the block, then back to what it was.

    Training turns autotuning on (its shapes are fixed per stage), but every validation image
    has its own size, and cuDNN would time every algorithm for each new one, every validation.
    (``torch.backends.cudnn.flags`` would reset cuDNN's other flags too, ``enabled`` included.)
    """
    was = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = was


class Validator:
    """PSNR/SSIM (Y, border = scale) of the model and of bicubic on this rank's validation shard,
    plus (rank 0) an image grid bicubic | SR | HR of centre crops of the first validation images.

    Scores come from ``srgan_dist.data.scoring.score_y`` on 8-bit images, as ``evaluate`` scores
    them; the model runs on whole images (``evaluate --tile 0`` gives the same numbers).
    Bicubic numbers never change, so they are computed once.
    """

    def __init__(self, val_set: list, grid_set: list, scale: int, device: torch.device, grid_crop: int):
        self.val_set = val_set
        self.scale = scale
        self.device = device
        sizes = [min(item.hr.shape[-2:]) for item in grid_set] or [0]
        crop = min(grid_crop, *sizes) // scale * scale
        self.grid_pairs = [self._centre_crops(item, crop) for item in grid_set] if crop else []
        self.bicubic: list[Scores] = [
            score_y(bicubic_upscale(to_uint8(item.lr), scale), to_uint8(item.hr), scale) for item in val_set
        ]

    def _centre_crops(self, item, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = item.hr.shape[-2:]
        top, left = (height - crop) // 2 // self.scale, (width - crop) // 2 // self.scale
        small = crop // self.scale
        lr = item.lr[..., top : top + small, left : left + small]
        hr = item.hr[
            ...,
            top * self.scale : (top + small) * self.scale,
            left * self.scale : (left + small) * self.scale,
        ]
        return lr, hr

    @torch.inference_mode()
    @cudnn_autotune_off()
    def run(self, generator: nn.Module, autocast) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (sums tensor [psnr, ssim, bicubic psnr, bicubic ssim, count], grid or None).

        Runs with cuDNN autotuning off (:func:`cudnn_autotune_off`): one image size per image."""
        was_training = generator.training
        generator.eval()

        def upscale(lr: torch.Tensor) -> np.ndarray:
            with autocast():
                sr = generator(lr.to(self.device))
            return to_uint8(generator_output_to_unit(sr.float()))

        sums = torch.zeros(5, dtype=torch.float64)
        for item, bicubic in zip(self.val_set, self.bicubic, strict=True):
            model = score_y(upscale(item.lr), to_uint8(item.hr), self.scale)
            metrics = [model.psnr, model.ssim, bicubic.psnr, bicubic.ssim, 1.0]
            sums += torch.tensor(metrics, dtype=torch.float64)
        tiles = []
        for lr, hr in self.grid_pairs:
            images = [bicubic_upscale(to_uint8(lr), self.scale), upscale(lr), to_uint8(hr)]
            tiles += [to_tensor(image)[0] for image in images]
        generator.train(was_training)
        grid = None
        if tiles:
            from torchvision.utils import make_grid  # importing torchvision takes seconds: only here

            grid = make_grid(tiles, nrow=3, padding=4, pad_value=1.0)
        return sums, grid
