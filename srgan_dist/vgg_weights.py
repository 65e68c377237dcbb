"""VGG19 weights for the perceptual loss: where they come from (``loss.vgg_weights``).

``"imagenet"`` loads torchvision's ``VGG19_Weights.IMAGENET1K_V1`` (downloaded once into the torch
hub cache), a path loads a local ``torchvision.models.vgg19`` state dict, an ``s3://`` / ``gs://``
URI the same file from object storage (downloaded once per node into ``~/.cache/srgan-dist/vgg``,
so nodes need no copy of their own), ``"random"`` keeps random init. Anything but real ImageNet weights makes the perceptual loss a different loss, so it is
logged as a warning every time. The architecture is ``srgan_dist.models.vgg`` (no I/O there).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from srgan_dist import storage
from srgan_dist.errors import UserError, torch_load_problem
from srgan_dist.models.vgg import vgg19_features

log = logging.getLogger(__name__)


class VGGWeightsUnavailable(UserError):
    """ImageNet VGG19 weights could not be loaded (typically: no internet, nothing cached)."""


def load_vgg19_features(weights: str, allow_random_fallback: bool = False) -> nn.Sequential:
    """Return ``vgg19().features`` with the requested weights (see module docstring)."""
    if weights == "random":
        log.warning("VGG19 uses RANDOM weights (loss.vgg_weights=random): perceptual loss is not VGG54")
        return vgg19_features()
    if weights == "imagenet":
        from torchvision.models import VGG19_Weights  # seconds to import: only when needed

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
            return vgg19_features()
    if storage.is_uri(weights):
        path = storage.cached_copy(weights, "vgg")
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"loss.vgg_weights: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError/RuntimeError/EOFError on a bad file
        raise UserError(
            f"loss.vgg_weights: {weights} is not a readable torch state dict: {torch_load_problem(error)}"
        ) from None
    from torchvision.models import vgg19

    try:
        with torch.device("meta"):  # only to check the whole file is a vgg19 state dict
            vgg19(weights=None).load_state_dict(state, assign=True)
        return _features_from_state(state)
    except (RuntimeError, TypeError, AttributeError) as error:  # TypeError: not a mapping
        raise UserError(
            f"loss.vgg_weights: {weights} is not a torchvision vgg19 state dict ({torch_load_problem(error)})"
        ) from None


def _features_from_state(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """Load the ``features.*`` part of a full vgg19 state dict (the classifier is not needed)."""
    prefix = "features."
    features = vgg19_features()
    features.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return features
