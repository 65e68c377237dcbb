"""One optimizer step of each stage: :data:`STEP_FUNCTIONS` maps a stage name (``stages.STAGES``)
to its step function. Every step function has one signature, :data:`StepFn`: it takes the
models and optimizers (:class:`StepModels`), a batch and a :class:`StepContext`, and returns a
dict of scalar tensors (``finite`` is 0 when a non-finite gradient made the step skip its
update); ``StageTrainer`` owns cadence, logging and checkpoints. Nothing here waits for the
device: with ``make_adam``'s optimizers a step never reads a value back to the host, so the
trainer decides when to (once per log window).

SRGAN step order (BasicSR's, safe under DDP with BatchNorm in D):
1. freeze D; G loss = content + perceptual + adversarial, where D runs *unwrapped* (no DDP hooks
   fire, no D gradients exist), then one G update;
2. unfreeze D; D loss on real, backward; D loss on ``fake.detach()``, backward; one D update.
   Each DDP forward of D is followed by its own backward, so BN buffers are never rewritten
   between a forward and its backward and DDP always finishes its reduction. The real pass runs
   under ``no_sync``: its gradients stay local and the fake pass's backward all-reduces the
   accumulated sum, so D's gradients cross the network once per step, not twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypeAlias

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


@dataclass(kw_only=True)
class StepModels:
    """What a step runs and updates. The models are the ones that run forward: under DDP and
    ``torch.compile`` their wrappers (``unwrap`` finds the plain module inside)."""

    generator: nn.Module
    optimizer_g: torch.optim.Optimizer
    discriminator: nn.Module | None = None
    """Adversarial stages only (``StageTraits.adversarial``), as is ``optimizer_d``."""
    optimizer_d: torch.optim.Optimizer | None = None
    perceptual: PerceptualLoss | None = None
    """Stages with ``StageTraits.perceptual`` only; frozen, never updated."""


StepFn: TypeAlias = Callable[[StepModels, torch.Tensor, torch.Tensor, StepContext], dict[str, torch.Tensor]]
"""``step(models, lr, hr, ctx) -> {name: scalar tensor}``, with ``finite`` among the names."""


def srresnet_step(
    models: StepModels, lr: torch.Tensor, hr: torch.Tensor, ctx: StepContext
) -> dict[str, torch.Tensor]:
    """One MSE (or L1) step of the generator alone."""
    generator, optimizer = models.generator, models.optimizer_g
    generator.train()
    optimizer.zero_grad(set_to_none=True)
    with ctx.autocast():
        sr = generator(lr)
        loss = content_loss(sr.float(), hr, ctx.loss.content)
    loss.backward()
    stepped = finite_step(optimizer)
    return {"loss/content": loss.detach(), "loss/total": loss.detach(), "finite": stepped}


def make_adam(params: Iterable[torch.Tensor], lr: float, device: torch.device | str) -> torch.optim.Adam:
    """Adam with the paper's betas (0.9, 0.999), fused where torch has the kernels (CPU, CUDA).

    Fused: one kernel per step instead of one per tensor, and ``finite_step`` can skip a
    non-finite update on the device. Loading a state dict saved by a non-fused Adam replaces the
    param groups' options, ``fused`` included (``Optimizer.load_state_dict``); ``finite_step``
    then falls back to its host-synchronising path, still correct.
    """
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=fused)


def finite_step(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Step ``optimizer`` unless some gradient is inf/NaN; return 1.0 if it stepped, else 0.0.

    The flag is a tensor on the gradients' device, never read here. Under DDP the gradients are
    already averaged over ranks, so every rank takes the same decision without a collective.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grads = [p.grad for p in params if p.grad is not None]
    found_inf = torch.zeros((), device=params[0].device)
    if not grads:
        optimizer.step()
        return 1.0 - found_inf
    # GradScaler's check: one multi-tensor pass that sets found_inf to 1.0 on any inf/NaN
    # (the "unscale" by 1.0 leaves the gradients bit-identical).
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, torch.ones_like(found_inf))
    if getattr(optimizer, "_step_supports_amp_scaling", False) and all(
        group.get("fused") for group in optimizer.param_groups
    ):
        # Why found_inf and fused Adam: torch's fused Adam kernels (CPU and CUDA; called from
        # torch/optim/adam.py _fused_adam with the optimizer's found_inf attribute, GradScaler's
        # protocol) return before touching params, exp_avg and exp_avg_sq when found_inf is 1 and
        # then subtract it from the step count, so a skipped step leaves no trace and needs no
        # sync. The for-loop and foreach Adam refuse found_inf, and a torch.where guard would
        # have to copy every parameter and moment each step to be able to restore them.
        optimizer.found_inf = found_inf
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not found_inf.item():  # any other optimizer: only the host can skip its step (a sync)
        optimizer.step()
    return 1.0 - found_inf


def ddp_no_sync(model: nn.Module) -> AbstractContextManager:
    """``DistributedDataParallel.no_sync`` of the DDP inside ``model``, or a null context."""
    while not isinstance(model, nn.parallel.DistributedDataParallel):
        if not hasattr(model, "_orig_mod"):
            return contextlib.nullcontext()
        model = model._orig_mod
    return model.no_sync()


def set_requires_grad(model: nn.Module, flag: bool) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(flag)


def srgan_step(
    models: StepModels, lr: torch.Tensor, hr: torch.Tensor, ctx: StepContext
) -> dict[str, torch.Tensor]:
    """One G update then one D update (see the module docstring for the order and why)."""
    generator, discriminator, perceptual = models.generator, models.discriminator, models.perceptual
    optimizer_g, optimizer_d = models.optimizer_g, models.optimizer_d
    assert discriminator is not None and optimizer_d is not None and perceptual is not None
    generator.train()
    discriminator.train()
    plain_d = unwrap(discriminator)

    # 1. Generator: D frozen and called without its DDP wrapper.
    set_requires_grad(plain_d, False)
    optimizer_g.zero_grad(set_to_none=True)
    with ctx.autocast():
        sr = generator(lr)
        fake_logits = plain_d(sr)
        # VGG costs more than G: it runs in the autocast dtype too; its MSE is taken in fp32.
        l_perceptual = perceptual(sr, hr)
    sr32 = sr.float()
    l_content = content_loss(sr32, hr, ctx.loss.content)
    l_adversarial = adversarial_generator_loss(fake_logits.float())
    l_g = (
        ctx.loss.content_weight_srgan * l_content
        + ctx.loss.perceptual_weight * l_perceptual
        + ctx.loss.adversarial_weight * l_adversarial
    )
    l_g.backward()
    stepped_g = finite_step(optimizer_g)

    # 2. Discriminator: real and fake, each forward followed by its own backward. The real
    # pass's forward and backward run under no_sync (DDP reads the flag in forward); the fake
    # pass's backward then all-reduces the accumulated real + fake gradients.
    set_requires_grad(plain_d, True)
    optimizer_d.zero_grad(set_to_none=True)
    with ddp_no_sync(discriminator):
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


STEP_FUNCTIONS: dict[str, StepFn] = {"srresnet": srresnet_step, "srgan": srgan_step}
"""The step function of each stage in ``stages.STAGES``."""
