"""Frozen VGG19 feature extractor for the perceptual loss.

Layers are named as in the paper: ``"ij"`` is the output of the ReLU after the j-th conv of block
i (before the i-th max-pool), so ``"54"`` is the paper's VGG54 and ``"22"`` its VGG22. Inputs are
images in [0, 1]; ImageNet normalisation happens inside.

Architecture only: the weights are loaded by ``srgan_dist.vgg_weights``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import vgg19
from torchvision.models.vgg import cfgs, make_layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_indices() -> dict[str, int]:
    """Map ``"ij"`` names to the index of that ReLU in ``vgg19().features``."""
    names: dict[str, int] = {}
    block, conv = 1, 0
    with torch.device("meta"):  # only the layout is needed: skip allocating and initialising 143M params
        layout = vgg19(weights=None).features
    for index, module in enumerate(layout):
        if isinstance(module, nn.Conv2d):
            conv += 1
        elif isinstance(module, nn.ReLU):
            names[f"{block}{conv}"] = index
        elif isinstance(module, nn.MaxPool2d):
            block, conv = block + 1, 0
    return names


VGG_LAYER_NAMES: dict[str, int] = _layer_indices()


def vgg19_features() -> nn.Sequential:
    """``vgg19().features`` with torchvision's own conv init, without building the 100M-parameter
    classifier that ``vgg19()`` would also allocate and initialise (seconds of CPU time)."""
    features = make_layers(cfgs["E"], batch_norm=False)
    for module in features:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return features


class VGGFeatures(nn.Module):
    """Frozen VGG19 truncated after layer ``layer``; maps images in [0, 1] to features.

    ``features`` is ``vgg19().features`` with the weights to use (``srgan_dist.vgg_weights``).
    """

    def __init__(self, layer: str, features: nn.Sequential) -> None:
        super().__init__()
        if layer not in VGG_LAYER_NAMES:
            raise ValueError(f"unknown VGG19 layer {layer!r}; known: {', '.join(VGG_LAYER_NAMES)}")
        self.layer = layer
        self.features = features[: VGG_LAYER_NAMES[layer] + 1]
        for module in self.features:
            if isinstance(module, nn.ReLU):
                module.inplace = False  # keep pre-activation tensors intact for autograd
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:
        """Stay in eval mode whatever the parent module does."""
        return super().train(False)

    def forward(self, image_BCHW: torch.Tensor) -> torch.Tensor:
        return self.features((image_BCHW - self.mean) / self.std)
