"""SRGAN networks: pure ``torch.nn`` modules, no I/O and no distributed code."""

from srgan_dist.models.discriminator import Discriminator
from srgan_dist.models.generator import Generator, generator_output_to_unit, unit_to_generator_range
from srgan_dist.models.vgg import VGG_LAYER_NAMES, VGGFeatures

__all__ = [
    "VGG_LAYER_NAMES",
    "Discriminator",
    "Generator",
    "VGGFeatures",
    "generator_output_to_unit",
    "unit_to_generator_range",
]
