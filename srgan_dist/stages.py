"""The training stages and their traits: one row per stage, in training order.

Everything that differs between stages and is not a config value is read from :data:`STAGES`;
the step function of each stage is ``srgan_dist/train/steps.py``'s ``STEP_FUNCTIONS``. A third
stage (e.g. ESRGAN's relativistic GAN) is one row here, a ``Literal`` name, its config section
and one step function.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

StageName = Literal["srresnet", "srgan"]


@dataclass(frozen=True, kw_only=True)
class StageTraits:
    """What a stage trains and needs, beyond its config section."""

    name: StageName
    adversarial: bool
    """Trains a discriminator too (its checkpoints hold G, D and both Adam states)."""
    perceptual: bool
    """Its generator loss uses VGG19 features (``loss.vgg_weights`` must load)."""


STAGES: dict[str, StageTraits] = {
    # the generator on pixel MSE
    "srresnet": StageTraits(name="srresnet", adversarial=False, perceptual=False),
    # the generator on VGG54 perceptual + adversarial loss, against a discriminator
    "srgan": StageTraits(name="srgan", adversarial=True, perceptual=True),
}
STAGE_NAMES: tuple[StageName, ...] = tuple(traits.name for traits in STAGES.values())
# The final model of a run is the last stage it exported; later stages first.
STAGES_LAST_FIRST: tuple[StageName, ...] = tuple(reversed(STAGE_NAMES))


def needs_vgg(stages: Iterable[str]) -> bool:
    """Whether any of ``stages`` uses the VGG19 perceptual loss."""
    return any(STAGES[stage].perceptual for stage in stages)
