"""Stage step functions, without Ray: what each update touches, and non-finite handling."""

from __future__ import annotations

import contextlib

import pytest
import torch

from srgan_dist.config import LossConfig
from srgan_dist.losses import PerceptualLoss
from srgan_dist.models import Discriminator, Generator, VGGFeatures
from srgan_dist.train.steps import StepContext, srgan_step, srresnet_step
from srgan_dist.vgg_weights import load_vgg19_features


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _changed(before: list[torch.Tensor], model: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.fixture
def gan():
    torch.manual_seed(0)
    generator = Generator(num_blocks=1, channels=8, scale=2, norm="none")
    discriminator = Discriminator(channels=8, norm="batch")
    vgg = VGGFeatures("22", load_vgg19_features("random"))
    ctx = StepContext(loss=LossConfig(), autocast=contextlib.nullcontext)
    lr = torch.rand(2, 3, 16, 16)
    hr = torch.rand(2, 3, 32, 32) * 2 - 1
    return generator, discriminator, PerceptualLoss(vgg), ctx, lr, hr


def test_srgan_g_update_leaves_d_alone_and_d_update_leaves_g_alone(gan):
    generator, discriminator, perceptual, ctx, lr, hr = gan
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    g0, d0 = _params(generator), _params(discriminator)
    seen = {}
    g_step, d_step = opt_g.step, opt_d.step

    def spy_g_step(*args, **kwargs):
        # At the G update, D has no gradients at all (frozen, called unwrapped).
        seen["d_grads_at_g_step"] = [p.grad for p in discriminator.parameters()]
        result = g_step(*args, **kwargs)
        seen["d_changed_by_g_step"] = _changed(d0, discriminator)
        seen["g_after_g_step"] = _params(generator)
        seen["g_grads_after_g_step"] = [p.grad.clone() for p in generator.parameters()]
        return result

    def spy_d_step(*args, **kwargs):
        # The D losses use fake.detach(): G's gradients are still exactly those of the G step.
        seen["g_grads_at_d_step"] = [p.grad.clone() for p in generator.parameters()]
        return d_step(*args, **kwargs)

    opt_g.step, opt_d.step = spy_g_step, spy_d_step
    values = srgan_step(generator, discriminator, opt_g, opt_d, perceptual, lr, hr, ctx)

    assert all(grad is None for grad in seen["d_grads_at_g_step"])
    assert not seen["d_changed_by_g_step"]
    assert _changed(g0, generator)  # the G step moved G
    assert _changed(d0, discriminator)  # the D step moved D
    # ...and did not move G further.
    assert all(torch.equal(a, b) for a, b in zip(seen["g_after_g_step"], generator.parameters(), strict=True))
    for before, at_d in zip(seen["g_grads_after_g_step"], seen["g_grads_at_d_step"], strict=True):
        assert torch.equal(before, at_d)
    assert all(p.requires_grad for p in discriminator.parameters())  # unfrozen again
    assert float(values["finite"]) == 1.0
    expected_keys = {
        "loss/content",
        "loss/perceptual",
        "loss/adversarial",
        "loss/total",
        "loss/discriminator",
    }
    assert expected_keys <= set(values)
    assert 0 < float(values["disc/real_prob"]) < 1


def test_srgan_generator_loss_weights(gan):
    """total = content_weight * content + perceptual_weight * perceptual + adversarial_weight * adversarial."""
    generator, discriminator, perceptual, _, lr, hr = gan
    loss = LossConfig(content_weight_srgan=0.5, perceptual_weight=2.0, adversarial_weight=0.01)
    ctx = StepContext(loss=loss, autocast=contextlib.nullcontext)
    opt_g = torch.optim.Adam(generator.parameters(), lr=0.0)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=0.0)
    values = srgan_step(generator, discriminator, opt_g, opt_d, perceptual, lr, hr, ctx)
    expected = (
        0.5 * values["loss/content"] + 2.0 * values["loss/perceptual"] + 0.01 * values["loss/adversarial"]
    )
    assert torch.allclose(values["loss/total"], expected)


def test_srresnet_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    generator = Generator(num_blocks=1, channels=8, scale=2, norm="none")
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
    ctx = StepContext(loss=LossConfig(), autocast=contextlib.nullcontext)
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16) * 2 - 1
    first = srresnet_step(generator, optimizer, lr, hr, ctx)["loss/content"]
    for _ in range(30):
        last = srresnet_step(generator, optimizer, lr, hr, ctx)["loss/content"]
    assert last < first * 0.8


def test_nonfinite_gradients_skip_the_update():
    torch.manual_seed(0)
    generator = Generator(num_blocks=1, channels=8, scale=2, norm="none")
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
    ctx = StepContext(loss=LossConfig(), autocast=contextlib.nullcontext)
    before = _params(generator)
    hr = torch.full((1, 3, 16, 16), float("nan"))
    values = srresnet_step(generator, optimizer, torch.rand(1, 3, 8, 8), hr, ctx)
    assert float(values["finite"]) == 0.0
    assert not _changed(before, generator)
