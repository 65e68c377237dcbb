"""Stage step functions, without Ray: what each update touches, and non-finite handling."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from srgan_dist.config import LossConfig
from srgan_dist.losses import PerceptualLoss
from srgan_dist.models import Discriminator, Generator, VGGFeatures
from srgan_dist.stages import STAGES
from srgan_dist.train.steps import (
    STEP_FUNCTIONS,
    StepContext,
    StepModels,
    finite_step,
    make_adam,
    srgan_step,
    srresnet_step,
)
from srgan_dist.vgg_weights import load_vgg19_features


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _changed(before: list[torch.Tensor], model: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_every_stage_has_its_step_function():
    """A stage added to ``stages.STAGES`` needs its step here too (the trainer looks it up by name)."""
    assert STEP_FUNCTIONS.keys() == STAGES.keys()


def gan_models(generator, discriminator, opt_g, opt_d, perceptual) -> StepModels:
    return StepModels(
        generator=generator,
        optimizer_g=opt_g,
        discriminator=discriminator,
        optimizer_d=opt_d,
        perceptual=perceptual,
    )


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
    values = srgan_step(gan_models(generator, discriminator, opt_g, opt_d, perceptual), lr, hr, ctx)

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
    values = srgan_step(gan_models(generator, discriminator, opt_g, opt_d, perceptual), lr, hr, ctx)
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
    first = srresnet_step(StepModels(generator=generator, optimizer_g=optimizer), lr, hr, ctx)["loss/content"]
    for _ in range(30):
        last = srresnet_step(StepModels(generator=generator, optimizer_g=optimizer), lr, hr, ctx)[
            "loss/content"
        ]
    assert last < first * 0.8


def test_nonfinite_gradients_skip_the_update():
    torch.manual_seed(0)
    generator = Generator(num_blocks=1, channels=8, scale=2, norm="none")
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
    ctx = StepContext(loss=LossConfig(), autocast=contextlib.nullcontext)
    before = _params(generator)
    hr = torch.full((1, 3, 16, 16), float("nan"))
    values = srresnet_step(
        StepModels(generator=generator, optimizer_g=optimizer), torch.rand(1, 3, 8, 8), hr, ctx
    )
    assert float(values["finite"]) == 0.0
    assert not _changed(before, generator)


# --------------------------------------------------------------------------- non-finite, no sync


def _adam_state(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [value.clone() for state in optimizer.state.values() for value in state.values()]


def _nan_grad_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    for index, parameter in enumerate(model.parameters()):
        parameter.grad = torch.randn_like(parameter)
        if index == 1:
            parameter.grad.view(-1)[0] = float("nan")
    return finite_step(optimizer)


@pytest.mark.parametrize("fused", [True, False], ids=["make_adam", "plain_adam"])
def test_nonfinite_gradient_leaves_params_and_adam_state_untouched(fused):
    torch.manual_seed(0)
    model = Generator(num_blocks=1, channels=8, scale=2, norm="none")
    optimizer = make_adam(model.parameters(), 1e-3, "cpu") if fused else torch.optim.Adam(model.parameters())
    for parameter in model.parameters():  # one good step first, so the moments are non-zero
        parameter.grad = torch.randn_like(parameter)
    assert float(finite_step(optimizer)) == 1.0
    params, state = _params(model), _adam_state(optimizer)

    flag = _nan_grad_step(model, optimizer)

    assert isinstance(flag, torch.Tensor) and float(flag) == 0.0
    assert not _changed(params, model)
    assert all(torch.equal(a, b) for a, b in zip(state, _adam_state(optimizer), strict=True))  # step too
    # ...and the next finite step moves both again.
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    assert float(finite_step(optimizer)) == 1.0
    assert _changed(params, model)
    assert all(not torch.equal(a, b) for a, b in zip(state, _adam_state(optimizer), strict=True))


def test_make_adam_is_fused_and_a_non_fused_state_dict_falls_back_safely():
    model = torch.nn.Linear(3, 2)
    optimizer = make_adam(model.parameters(), 1e-3, "cpu")
    assert optimizer.param_groups[0]["fused"] and optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    old = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    old.step()
    optimizer.load_state_dict(old.state_dict())  # torch replaces the group options: fused off
    params, state = _params(model), _adam_state(optimizer)
    assert float(_nan_grad_step(model, optimizer)) == 0.0
    assert not _changed(params, model)
    assert all(torch.equal(a, b) for a, b in zip(state, _adam_state(optimizer), strict=True))


class _NoHostSync:
    """Fails the test if anything reads a tensor's value on the host."""

    def __init__(self, monkeypatch):
        def refuse(self, *args, **kwargs):
            raise AssertionError("host synchronisation in a step")

        for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
            monkeypatch.setattr(torch.Tensor, name, refuse)


def test_steps_with_make_adam_never_read_values_on_the_host(gan, monkeypatch):
    generator, discriminator, perceptual, ctx, lr, hr = gan
    opt_g = make_adam(generator.parameters(), 1e-3, "cpu")
    opt_d = make_adam(discriminator.parameters(), 1e-3, "cpu")
    pre = Generator(num_blocks=1, channels=8, scale=2, norm="none")
    opt_pre = make_adam(pre.parameters(), 1e-3, "cpu")
    _NoHostSync(monkeypatch)
    for _ in range(2):
        values = srgan_step(gan_models(generator, discriminator, opt_g, opt_d, perceptual), lr, hr, ctx)
        pre_values = srresnet_step(StepModels(generator=pre, optimizer_g=opt_pre), lr, hr, ctx)
    monkeypatch.undo()
    assert float(values["finite"]) == 1.0 and float(pre_values["finite"]) == 1.0


def test_srgan_step_with_nan_target_skips_both_updates(gan):
    generator, discriminator, perceptual, ctx, lr, hr = gan
    opt_g = make_adam(generator.parameters(), 1e-3, "cpu")
    opt_d = make_adam(discriminator.parameters(), 1e-3, "cpu")
    srgan_step(gan_models(generator, discriminator, opt_g, opt_d, perceptual), lr, hr, ctx)
    g, d, state_g, state_d = (
        _params(generator),
        _params(discriminator),
        _adam_state(opt_g),
        _adam_state(opt_d),
    )
    values = srgan_step(
        gan_models(generator, discriminator, opt_g, opt_d, perceptual),
        lr,
        torch.full_like(hr, float("nan")),
        ctx,
    )
    assert float(values["finite"]) == 0.0
    assert not _changed(g, generator) and not _changed(d, discriminator)
    assert all(
        torch.equal(a, b)
        for a, b in zip(state_g + state_d, _adam_state(opt_g) + _adam_state(opt_d), strict=True)
    )


def test_perceptual_loss_runs_under_autocast_and_reduces_in_fp32(gan):
    generator, discriminator, perceptual, _, lr, hr = gan
    ctx = StepContext(loss=LossConfig(), autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    seen = []
    perceptual.vgg.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    opt_g, opt_d = (
        make_adam(generator.parameters(), 1e-3, "cpu"),
        make_adam(discriminator.parameters(), 1e-3, "cpu"),
    )
    values = srgan_step(gan_models(generator, discriminator, opt_g, opt_d, perceptual), lr, hr, ctx)
    assert seen == [torch.bfloat16, torch.bfloat16]  # SR and HR features
    assert values["loss/perceptual"].dtype == torch.float32 and float(values["finite"]) == 1.0


# --------------------------------------------------------------------------- DDP, 2 gloo ranks


def _ddp_worker(rank: int, world_size: int, port: int, steps: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    torch.set_num_threads(1)  # two ranks on a small CI machine
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)  # same initial weights on both ranks (DDP would broadcast them anyway)
        generator = Generator(num_blocks=1, channels=8, scale=2, norm="none")
        discriminator = Discriminator(channels=8, norm="batch")
        perceptual = PerceptualLoss(VGGFeatures("22", load_vgg19_features("random")))
        generator = torch.nn.parallel.DistributedDataParallel(generator)
        discriminator = torch.nn.parallel.DistributedDataParallel(discriminator)
        d_reductions = []

        def counting_hook(state, bucket):
            d_reductions.append(bucket.index())
            return allreduce_hook(state, bucket)

        discriminator.register_comm_hook(None, counting_hook)
        opt_g = make_adam(generator.parameters(), 1e-3, "cpu")
        opt_d = make_adam(discriminator.parameters(), 1e-3, "cpu")
        ctx = StepContext(loss=LossConfig(), autocast=contextlib.nullcontext)
        data = torch.Generator().manual_seed(100 + rank)  # every rank sees different data
        reductions_per_step = []
        for _ in range(steps):
            lr = torch.rand(2, 3, 16, 16, generator=data)
            hr = torch.rand(2, 3, 32, 32, generator=data) * 2 - 1
            values = srgan_step(gan_models(generator, discriminator, opt_g, opt_d, perceptual), lr, hr, ctx)
            reductions_per_step.append(sorted(d_reductions))
            d_reductions.clear()
        # train.ddp_comm_hook=bf16, through the trainer's own wrap: one backward of a small conv
        from srgan_dist.train.trainer import wrap

        torch.manual_seed(1)
        plain = torch.nn.Conv2d(3, 4, 3)
        hooked = wrap(copy.deepcopy(plain), world_size, torch.device("cpu"), False, comm_hook="bf16")
        image = torch.rand(2, 3, 8, 8, generator=data)
        plain(image).square().mean().backward()  # this rank's own gradient, no all-reduce
        hooked(image).square().mean().backward()
        torch.save(
            {
                "g": [p.detach() for p in generator.parameters()],
                "d": [p.detach() for p in discriminator.parameters()],
                "d_reductions": reductions_per_step,
                "finite": float(values["finite"]),
                "local_grads": [p.grad for p in plain.parameters()],
                "hooked_grads": [p.grad for p in hooked.parameters()],
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_g_and_d_stay_identical_across_two_gloo_ranks(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    steps = 3
    mp.spawn(_ddp_worker, args=(2, port, steps, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    g0 = _params(Generator(num_blocks=1, channels=8, scale=2, norm="none"))
    for key in ("g", "d"):
        assert all(torch.equal(a, b) for a, b in zip(ranks[0][key], ranks[1][key], strict=True)), key
    assert any(not torch.equal(a, b) for a, b in zip(g0, ranks[0]["g"], strict=True))  # G trained
    for result in ranks:
        assert result["finite"] == 1.0
        # D's gradients are all-reduced once per step (its real pass runs under no_sync): each
        # of its buckets once (DDP rebuilds its buckets after the first step, hence "each").
        for buckets in result["d_reductions"]:
            assert buckets and len(set(buckets)) == len(buckets), result["d_reductions"]
    # train.ddp_comm_hook=bf16 over gloo: every rank gets the mean of the ranks' gradients as bf16
    # carried it (each value a bf16 number), within bf16's rounding of the exact mean.
    means = [(a + b) / 2 for a, b in zip(ranks[0]["local_grads"], ranks[1]["local_grads"], strict=True)]
    for rank in ranks:
        for got, mean in zip(rank["hooked_grads"], means, strict=True):
            assert torch.equal(got, got.to(torch.bfloat16).float())
            torch.testing.assert_close(got, mean, rtol=2**-7, atol=1e-6)
    assert any(not torch.equal(g, m) for g, m in zip(ranks[0]["hooked_grads"], means, strict=True))
