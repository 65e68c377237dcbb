"""Loss terms: gradients flow where they must, values match hand computation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from srgan_dist.losses import (
    PerceptualLoss,
    adversarial_generator_loss,
    content_loss,
    discriminator_fake_loss,
    discriminator_real_loss,
)
from srgan_dist.models import VGGFeatures


def _small_vgg_features() -> nn.Sequential:
    """The first VGG19 block (conv, ReLU, conv, ReLU, pool) is enough for layer "12"."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
    )


@pytest.fixture
def perceptual() -> PerceptualLoss:
    return PerceptualLoss(VGGFeatures("12", _small_vgg_features()), feature_scale=1 / 12.75)


def test_perceptual_loss_gradient_reaches_generator_output(perceptual: PerceptualLoss) -> None:
    torch.manual_seed(1)
    sr = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    hr = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    loss = perceptual(sr, hr)
    assert loss.item() > 0
    loss.backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert hr.grad is None  # the target branch runs without autograd
    assert all(p.grad is None for p in perceptual.parameters())  # VGG stays frozen


@pytest.mark.parametrize("weight_dtype", [None, torch.bfloat16])
def test_vgg_laid_out_for_steps_gives_the_reference_loss_and_gradient(weight_dtype) -> None:
    """``VGGFeatures.for_steps`` (channels_last convs, weights in the autocast dtype) with in-place
    ReLUs: the loss and SR gradient of plain NCHW fp32 layers with out-of-place ReLUs."""
    features = _small_vgg_features()
    reference = PerceptualLoss(VGGFeatures("12", copy.deepcopy(features)))
    for module in reference.vgg.features:
        if isinstance(module, nn.ReLU):
            module.inplace = False
    laid_out = PerceptualLoss(VGGFeatures("12", features))
    laid_out.vgg.for_steps(channels_last=True, weight_dtype=weight_dtype)
    convs = [m for m in laid_out.vgg.features if isinstance(m, nn.Conv2d)]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert all(m.weight.dtype == (weight_dtype or torch.float32) for m in convs)
    assert all(m.inplace for m in laid_out.vgg.features if isinstance(m, nn.ReLU))
    assert laid_out.vgg.mean.dtype == torch.float32  # the normalisation stays fp32

    torch.manual_seed(1)
    sr = torch.rand(2, 3, 16, 16) * 2 - 1
    hr = torch.rand(2, 3, 16, 16) * 2 - 1
    results = []
    for loss_fn, layout in ((reference, torch.contiguous_format), (laid_out, torch.channels_last)):
        leaf = sr.clone().contiguous(memory_format=layout).requires_grad_(True)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=weight_dtype is not None)
        with autocast:
            loss = loss_fn(leaf, hr.contiguous(memory_format=layout))
        loss.backward()
        results.append((loss.detach(), leaf.grad))
    (loss_ref, grad_ref), (loss, grad) = results
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(grad.contiguous(), grad_ref)


def test_perceptual_loss_value(perceptual: PerceptualLoss) -> None:
    torch.manual_seed(2)
    sr, hr = torch.rand(1, 3, 8, 8) * 2 - 1, torch.rand(1, 3, 8, 8) * 2 - 1
    vgg = perceptual.vgg
    expected = torch.mean((vgg((sr + 1) / 2) / 12.75 - vgg((hr + 1) / 2) / 12.75) ** 2)
    torch.testing.assert_close(perceptual(sr, hr), expected)
    assert perceptual(hr, hr).item() == 0.0


def test_perceptual_loss_passes_gradient_where_sr_overshoots(perceptual: PerceptualLoss) -> None:
    # Generator output is not squashed: values beyond [-1, 1] must still get a gradient.
    sr = torch.full((1, 3, 8, 8), 1.5, requires_grad=True)
    perceptual(sr, torch.zeros(1, 3, 8, 8)).backward()
    assert sr.grad.abs().sum() > 0


def test_content_losses_by_hand() -> None:
    sr = torch.tensor([[0.5, -1.0], [0.0, 1.0]])
    hr = torch.tensor([[0.0, -0.5], [0.0, -1.0]])
    # differences 0.5, -0.5, 0, 2
    assert content_loss(sr, hr).item() == pytest.approx((0.25 + 0.25 + 0 + 4) / 4)
    assert content_loss(sr, hr, "mse").item() == pytest.approx(1.125)
    assert content_loss(sr, hr, "l1").item() == pytest.approx((0.5 + 0.5 + 0 + 2) / 4)
    with pytest.raises(ValueError, match="huber"):
        content_loss(sr, hr, "huber")  # type: ignore[arg-type]


def test_adversarial_losses_by_hand() -> None:
    zero = torch.zeros(4, 1)
    assert adversarial_generator_loss(zero).item() == pytest.approx(math.log(2))
    assert discriminator_real_loss(zero).item() == pytest.approx(math.log(2))
    assert discriminator_fake_loss(zero).item() == pytest.approx(math.log(2))

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    fake = torch.tensor([[2.0], [-1.0]])
    real = torch.tensor([[3.0], [0.5]])
    # generator: -log D(G(LR)), D = sigmoid(logit)
    expected_g = -(math.log(sigmoid(2.0)) + math.log(sigmoid(-1.0))) / 2
    assert adversarial_generator_loss(fake).item() == pytest.approx(expected_g, rel=1e-6)
    # discriminator: mean -log D(HR) and mean -log(1 - D(G(LR)))
    expected_real = -(math.log(sigmoid(3.0)) + math.log(sigmoid(0.5))) / 2
    expected_fake = -(math.log(1 - sigmoid(2.0)) + math.log(1 - sigmoid(-1.0))) / 2
    assert discriminator_real_loss(real).item() == pytest.approx(expected_real, rel=1e-6)
    assert discriminator_fake_loss(fake).item() == pytest.approx(expected_fake, rel=1e-6)


def test_adversarial_losses_move_the_right_way() -> None:
    zero, confident, wrong = torch.zeros(3, 1), torch.full((3, 1), 2.0), torch.full((3, 1), -2.0)
    # the discriminator wants HR called real and fakes called fake
    assert discriminator_real_loss(confident) < discriminator_real_loss(zero) < discriminator_real_loss(wrong)
    assert discriminator_fake_loss(wrong) < discriminator_fake_loss(zero) < discriminator_fake_loss(confident)
    # the generator wants its fakes called real
    assert adversarial_generator_loss(torch.full((3, 1), 2.0)) < adversarial_generator_loss(torch.zeros(3, 1))


def test_adversarial_losses_are_stable_for_large_logits() -> None:
    # BCE-with-logits, not log(sigmoid): no inf/nan for confident discriminators
    big = torch.full((2, 1), 200.0)
    assert torch.isfinite(adversarial_generator_loss(-big))
    assert adversarial_generator_loss(-big).item() == pytest.approx(200.0)
    assert discriminator_real_loss(-big).item() == pytest.approx(200.0)
    assert discriminator_fake_loss(big).item() == pytest.approx(200.0)
