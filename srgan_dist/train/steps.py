"""One optimizer step of each stage. Step functions take models, optimizers and a batch and return
a dict of scalar tensors (``finite`` is 0 when a non-finite gradient made the step skip its
update); the worker loop owns cadence, logging and checkpoints.

SRGAN step order (BasicSR's, safe under DDP with BatchNorm in D):
1. freeze D; G loss = content + perceptual + adversarial, where D runs *unwrapped* (no DDP hooks
   fire, no D gradients exist), then one G update;
2. unfreeze D; D loss on real, backward; D loss on ``fake.detach()``, backward; one D update.
   Each DDP forward of D is followed by its own backward, so BN buffers are never rewritten
   between a forward and its backward and DDP always finishes its reduction.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from srgan_dist.config import LossConfig
from srgan_dist.losses import (
    PerceptualLoss,
    adversarial_generator_loss,
    content_loss,
    discriminator_fake_loss,
    discriminator_real_loss,
)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


@dataclass
class StepContext:
    """What a step needs besides models and batch: loss settings and the autocast context."""

    loss: LossConfig
    autocast: Callable[[], AbstractContextManager]
    """Makes a fresh autocast context (bf16 on GPU) or a null context."""


def srresnet_step(
    generator: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr: torch.Tensor,
    hr: torch.Tensor,
    ctx: StepContext,
) -> dict[str, torch.Tensor]:
    """One MSE (or L1) step of the generator alone."""
    generator.train()
    optimizer.zero_grad(set_to_none=True)
    with ctx.autocast():
        sr = generator(lr)
        loss = content_loss(sr.float(), hr, ctx.loss.content)
    loss.backward()
    stepped = finite_step(optimizer)
    return {"loss/content": loss.detach(), "loss/total": loss.detach(), "finite": stepped}


def finite_step(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Step ``optimizer`` only if every gradient is finite; return 1.0 if it stepped, else 0.0.

    Under DDP the gradients are already averaged over ranks, so every rank takes the same
    decision without another collective.
    """
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    finite = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else torch.tensor(True)
    if bool(finite):
        optimizer.step()
    return finite.float()


def set_requires_grad(model: nn.Module, flag: bool) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(flag)


def srgan_step(
    generator: nn.Module,
    discriminator: nn.Module,
    optimizer_g: torch.optim.Optimizer,
    optimizer_d: torch.optim.Optimizer,
    perceptual: PerceptualLoss,
    lr: torch.Tensor,
    hr: torch.Tensor,
    ctx: StepContext,
) -> dict[str, torch.Tensor]:
    """One G update then one D update (see the module docstring for the order and why)."""
    generator.train()
    discriminator.train()
    plain_d = unwrap(discriminator)

    # 1. Generator: D frozen and called without its DDP wrapper.
    set_requires_grad(plain_d, False)
    optimizer_g.zero_grad(set_to_none=True)
    with ctx.autocast():
        sr = generator(lr)
        fake_logits = plain_d(sr)
    sr32 = sr.float()
    l_content = content_loss(sr32, hr, ctx.loss.content)
    l_perceptual = perceptual(sr32, hr)
    l_adversarial = adversarial_generator_loss(fake_logits.float())
    l_g = (
        ctx.loss.content_weight_srgan * l_content
        + ctx.loss.perceptual_weight * l_perceptual
        + ctx.loss.adversarial_weight * l_adversarial
    )
    l_g.backward()
    stepped_g = finite_step(optimizer_g)

    # 2. Discriminator: real and fake, each forward followed by its own backward.
    set_requires_grad(plain_d, True)
    optimizer_d.zero_grad(set_to_none=True)
    with ctx.autocast():
        real_logits = discriminator(hr)
    l_d_real = discriminator_real_loss(real_logits.float())
    l_d_real.backward()
    with ctx.autocast():
        fake_logits_d = discriminator(sr.detach())
    l_d_fake = discriminator_fake_loss(fake_logits_d.float())
    l_d_fake.backward()
    stepped_d = finite_step(optimizer_d)

    return {
        "loss/content": l_content.detach(),
        "loss/perceptual": l_perceptual.detach(),
        "loss/adversarial": l_adversarial.detach(),
        "loss/total": l_g.detach(),
        "loss/discriminator": (l_d_real + l_d_fake).detach(),
        "disc/real_prob": torch.sigmoid(real_logits.detach().float()).mean(),
        "disc/fake_prob": torch.sigmoid(fake_logits_d.detach().float()).mean(),
        "finite": stepped_g * stepped_d,
    }
