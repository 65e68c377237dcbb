"""Frozen VGG19 feature extractor for the perceptual loss.

Layers are named as in the paper: ``"ij"`` is the output of the ReLU after the j-th conv of block
i (before the i-th max-pool), so ``"54"`` is the paper's VGG54 and ``"22"`` its VGG22. Inputs are
images in [0, 1]; ImageNet normalisation happens inside.

Architecture only: the weights are loaded by ``srgan_dist.vgg_weights``.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's VGG19 (its ``cfgs["E"]``): conv3x3 channels, "M" = 2x2 max-pool. Spelled out here
# so that importing the model does not import torchvision (seconds: it pulls in torch._dynamo);
# tests check the layers and the state-dict keys against torchvision's ``vgg19().features``.
VGG19_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip


def _layer_indices() -> dict[str, int]:
    """Map ``"ij"`` names to the index of that ReLU in ``vgg19().features`` (conv, ReLU per
    number; one max-pool per "M")."""
    names: dict[str, int] = {}
    block, conv, index = 1, 0, 0
    for item in VGG19_LAYOUT:
        if item == "M":
            block, conv, index = block + 1, 0, index + 1
        else:
            conv += 1
            names[f"{block}{conv}"] = index + 1
            index += 2
    return names


VGG_LAYER_NAMES: dict[str, int] = _layer_indices()


def vgg19_features() -> nn.Sequential:
    """``vgg19().features`` with torchvision's own conv init (``torchvision.models.vgg.make_layers``
    and ``VGG._initialize_weights``), without the 100M-parameter classifier ``vgg19()`` would also
    allocate and initialise (seconds of CPU time)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG19_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        conv = nn.Conv2d(in_channels, int(item), kernel_size=3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU(inplace=True)]
        in_channels = int(item)
    return nn.Sequential(*layers)


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
                # In place is safe for autograd: ReLU's backward reads its output, and a conv's
                # backward reads its input and weight, never its output (the tensor overwritten).
                module.inplace = True
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def for_steps(self, *, channels_last: bool, weight_dtype: torch.dtype | None) -> VGGFeatures:
        """Lay the frozen weights out as a training step feeds them, once, so no step re-does it.

        ``channels_last`` matches the channels_last batches (else every conv re-lays its weight
        out on each call); ``weight_dtype`` is the autocast dtype (autocast caches the casts of
        trainable weights only, so frozen fp32 weights would be re-cast on each of the two VGG
        calls of every step). Only the convolutions change: the ImageNet normalisation stays fp32.
        """
        if channels_last:
            self.features.to(memory_format=torch.channels_last)
        if weight_dtype is not None:
            self.features.to(weight_dtype)
        return self

    def train(self, mode: bool = True) -> VGGFeatures:
        """Stay in eval mode whatever the parent module does."""
        return super().train(False)

    def forward(self, image_BCHW: torch.Tensor) -> torch.Tensor:
        return self.features((image_BCHW - self.mean) / self.std)
