"""Frozen VGG19 feature extractor for the perceptual loss.

Layers are named as in the paper: ``"ij"`` is the output of the ReLU after the j-th conv of block
i (before the i-th max-pool), so ``"54"`` is the paper's VGG54 and ``"22"`` its VGG22. Inputs are
images in [0, 1]; ImageNet normalisation happens inside.

Weights: ``"imagenet"`` loads torchvision's ImageNet weights (downloaded once into the torch hub
cache), a path loads a local ``torchvision.models.vgg19`` state dict, ``"random"`` keeps random
init. Anything but real ImageNet weights makes the perceptual loss a different loss, so it is
logged as a warning every time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models import VGG19_Weights, vgg19
from torchvision.models.vgg import cfgs, make_layers

log = logging.getLogger(__name__)

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


def _random_features() -> nn.Sequential:
    """``vgg19().features`` with torchvision's own conv init, without building the 100M-parameter
    classifier that ``vgg19()`` would also allocate and initialise (seconds of CPU time)."""
    features = make_layers(cfgs["E"], batch_norm=False)
    for module in features:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return features


def _features_from_state(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """Load the ``features.*`` part of a full vgg19 state dict (the classifier is not needed)."""
    prefix = "features."
    features = make_layers(cfgs["E"], batch_norm=False)
    features.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return features


class VGGWeightsUnavailable(RuntimeError):
    """ImageNet VGG19 weights could not be loaded (typically: no internet, nothing cached)."""


def load_vgg19_features(weights: str, allow_random_fallback: bool = False) -> nn.Sequential:
    """Return ``vgg19().features`` with the requested weights (see module docstring)."""
    if weights == "random":
        log.warning("VGG19 uses RANDOM weights (loss.vgg_weights=random): perceptual loss is not VGG54")
        return _random_features()
    if weights == "imagenet":
        try:
            return _features_from_state(VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False))
        except Exception as error:  # torchvision raises URLError/OSError/RuntimeError offline
            if not allow_random_fallback:
                raise VGGWeightsUnavailable(
                    f"could not load torchvision VGG19 ImageNet weights ({error}). Put the file in "
                    "the torch hub cache, pass loss.vgg_weights=/path/to/vgg19.pth, or set "
                    "loss.vgg_random_fallback=true for a demo"
                ) from error
            log.warning(
                "VGG19 ImageNet weights unavailable (%s): FALLING BACK TO RANDOM WEIGHTS because "
                "loss.vgg_random_fallback=true. The perceptual loss is not the paper's VGG54.",
                error,
            )
            return _random_features()
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"loss.vgg_weights: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError/RuntimeError/EOFError on a bad file
        raise ValueError(f"loss.vgg_weights: {path} is not a readable torch state dict: {error}") from error
    try:
        with torch.device("meta"):  # only to check the whole file is a vgg19 state dict
            vgg19(weights=None).load_state_dict(state, assign=True)
        return _features_from_state(state)
    except (RuntimeError, TypeError, AttributeError) as error:  # TypeError: not a mapping
        raise ValueError(
            f"loss.vgg_weights: {path} is not a torchvision vgg19 state dict: {error}"
        ) from error


class VGGFeatures(nn.Module):
    """Frozen VGG19 truncated after layer ``layer``; maps images in [0, 1] to features."""

    def __init__(self, layer: str = "54", features: nn.Sequential | None = None) -> None:
        super().__init__()
        if layer not in VGG_LAYER_NAMES:
            raise ValueError(f"unknown VGG19 layer {layer!r}; known: {', '.join(VGG_LAYER_NAMES)}")
        features = features if features is not None else load_vgg19_features("random")
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
