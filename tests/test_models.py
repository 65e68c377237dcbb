"""Generator, discriminator and VGG feature extractor: shapes, paper structure, weights loading."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision.models
from torch import nn
from torchvision.models import vgg19

from srgan_dist.errors import UserError
from srgan_dist.models import VGG_LAYER_NAMES, Discriminator, Generator, VGGFeatures
from srgan_dist.models.vgg import vgg19_features
from srgan_dist.vgg_weights import VGGWeightsUnavailable, load_vgg19_features


def _fast_vgg19(weights: object = None) -> nn.Module:
    """torchvision's vgg19 layout with uninitialised CPU storage: skips seconds of random init
    of 143M parameters (the classifier alone has 120M) that these tests never look at."""
    assert weights is None
    with torch.device("meta"):
        model = vgg19(weights=None)
    return model.to_empty(device="cpu")


@pytest.fixture(scope="module")
def random_features() -> nn.Sequential:
    """Real VGG19 ``features`` with PyTorch's default conv init (cheap; values are irrelevant)."""
    torch.manual_seed(0)
    features = _fast_vgg19().features
    for module in features:
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return features


# --- generator ------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("scale", [2, 4, 8])
def test_generator_output_shape(scale: int, norm: str) -> None:
    model = Generator(num_blocks=2, channels=8, scale=scale, norm=norm)
    lr = torch.rand(2, 3, 6, 5)
    assert model(lr).shape == (2, 3, 6 * scale, 5 * scale)
    upsample_convs = [m for m in model.upsample if isinstance(m, nn.PixelShuffle)]
    assert len(upsample_convs) == {2: 1, 4: 2, 8: 3}[scale]


def test_generator_paper_parameter_count() -> None:
    model = Generator(num_blocks=16, channels=64, scale=4, norm="batch")
    assert sum(p.numel() for p in model.parameters()) == 1_549_462
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2 * 16 + 1
    assert sum(isinstance(m, nn.PReLU) for m in model.modules()) == 1 + 16 + 2


def test_generator_without_norm_has_no_batchnorm() -> None:
    model = Generator(num_blocks=3, channels=8, norm="none")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    with_bn = Generator(num_blocks=3, channels=8, norm="batch")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 7


def test_generator_residual_block_structure() -> None:
    block = Generator(num_blocks=1, channels=8).body[0].body
    kinds = [type(m) for m in block]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.PReLU, nn.Conv2d, nn.BatchNorm2d]


def test_generator_skip_connections() -> None:
    # Zero the last conv of every residual block: with its skip each block is then the identity,
    # so SR = tail(upsample(h + body_tail(h))) with h = head(LR) (the long skip adds h back).
    torch.manual_seed(0)
    model = Generator(num_blocks=2, channels=8, norm="none").eval()
    with torch.no_grad():
        for block in model.body:
            block.body[3].weight.zero_()
            block.body[3].bias.zero_()
        lr = torch.rand(1, 3, 6, 6)
        head = model.head(lr)
        torch.testing.assert_close(model(lr), model.tail(model.upsample(head + model.body_tail(head))))


@pytest.mark.parametrize("kwargs", [{"scale": 3}, {"scale": 1}, {"scale": 16}, {"norm": "layer"}])
def test_generator_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Generator(num_blocks=1, channels=8, **kwargs)


# --- discriminator --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [96, 128, 16])
def test_discriminator_gives_one_logit_per_image(size: int) -> None:
    model = Discriminator(channels=8)
    assert model(torch.rand(2, 3, size, size) * 2 - 1).shape == (2, 1)


def test_discriminator_paper_layout() -> None:
    model = Discriminator()  # paper: 64 channels
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert all(c.kernel_size == (3, 3) for c in convs)
    layers = list(model.features)
    # no BN right after the first conv; every later conv is followed by BN
    assert isinstance(layers[1], nn.LeakyReLU)
    for conv in convs[1:]:
        assert isinstance(layers[layers.index(conv) + 1], nn.BatchNorm2d)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 7
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}
    dense = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(512 * 6 * 6, 1024), (1024, 1)]
    # at 96 px the strided convs alone reach 6x6, so the adaptive pool changes nothing
    assert model.features(torch.rand(1, 3, 96, 96)).shape[-2:] == (6, 6)


def test_discriminator_without_norm() -> None:
    model = Discriminator(channels=8, norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with pytest.raises(ValueError):
        Discriminator(norm="group")


def test_discriminator_rejects_too_small_input() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        Discriminator(channels=8)(torch.rand(1, 3, 15, 32))


# --- VGG19 features -------------------------------------------------------------------------


def test_layer_names_match_torchvision_layout() -> None:
    with torch.device("meta"):
        features = vgg19(weights=None).features
    assert VGG_LAYER_NAMES["22"] == 8
    assert VGG_LAYER_NAMES["54"] == 35
    assert len(VGG_LAYER_NAMES) == 16
    for name, index in VGG_LAYER_NAMES.items():
        block, conv = int(name[0]), int(name[1])
        before = list(features[: index + 1])
        assert isinstance(before[-1], nn.ReLU)
        assert isinstance(before[-2], nn.Conv2d)
        assert sum(isinstance(m, nn.MaxPool2d) for m in before) == block - 1
        last_pool = max((i for i, m in enumerate(before) if isinstance(m, nn.MaxPool2d)), default=-1)
        assert sum(isinstance(m, nn.Conv2d) for m in before[last_pool + 1 :]) == conv
    # "54" is the last ReLU before the last max-pool
    assert isinstance(features[36], nn.MaxPool2d) and len(features) == 37


@pytest.mark.parametrize(("layer", "end"), [("22", 8), ("54", 35), ("34", 17)])
def test_vgg_features_truncation(random_features: nn.Sequential, layer: str, end: int) -> None:
    vgg = VGGFeatures(layer, random_features)
    assert len(vgg.features) == end + 1
    assert isinstance(vgg.features[-1], nn.ReLU)
    convs = sum(isinstance(m, nn.Conv2d) for m in vgg.features)
    assert convs == {"22": 4, "54": 16, "34": 8}[layer]


def test_vgg_features_frozen_and_eval(random_features: nn.Sequential) -> None:
    vgg = VGGFeatures("22", random_features)
    parent = nn.Sequential(nn.Conv2d(3, 3, 1), vgg)
    parent.train()
    assert not vgg.training
    assert all(not m.training for m in vgg.modules())
    assert all(not p.requires_grad for p in vgg.parameters())
    assert parent[0].training  # only the VGG refuses training mode
    out = vgg(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 128, 16, 16)
    assert all(
        m.inplace for m in vgg.features if isinstance(m, nn.ReLU)
    )  # safe for autograd: see VGGFeatures


def test_vgg_features_normalise_imagenet(random_features: nn.Sequential) -> None:
    vgg = VGGFeatures("11", random_features)
    image = torch.rand(1, 3, 8, 8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = vgg.features((image - mean) / std)
    torch.testing.assert_close(vgg(image), expected)
    assert not torch.allclose(vgg.features(image), expected)


def test_vgg_unknown_layer(random_features: nn.Sequential) -> None:
    for layer in ("55", "13", "conv5_4", ""):
        with pytest.raises(ValueError, match="unknown VGG19 layer"):
            VGGFeatures(layer, random_features)


def test_features_are_torchvision_vgg19_features_without_importing_torchvision() -> None:
    with torch.device("meta"):
        ours = {key: value.shape for key, value in vgg19_features().state_dict().items()}
        theirs = {key: value.shape for key, value in vgg19(weights=None).features.state_dict().items()}
    assert ours == theirs
    # Nor does the trainer a Ray worker imports (torchvision costs seconds of every start-up).
    code = "import sys, srgan_dist.train.trainer; print('torchvision' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "False"


def test_random_weights_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="srgan_dist.vgg_weights"), torch.device("meta"):
        features = load_vgg19_features("random")
    assert len(features) == 37
    assert any(r.levelno == logging.WARNING and "RANDOM" in r.getMessage() for r in caplog.records)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torchvision's ImageNet weight download fail as it does without internet."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise URLError("simulated: no network")

    monkeypatch.setattr(torchvision.models.VGG19_Weights, "get_state_dict", no_network)


@pytest.mark.usefixtures("offline")
def test_imagenet_offline_without_fallback_raises() -> None:
    with torch.device("meta"), pytest.raises(VGGWeightsUnavailable, match="vgg_random_fallback"):
        load_vgg19_features("imagenet")


@pytest.mark.usefixtures("offline")
def test_imagenet_offline_with_fallback_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="srgan_dist.vgg_weights"), torch.device("meta"):
        features = load_vgg19_features("imagenet", allow_random_fallback=True)
    assert len(features) == 37
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("FALLING BACK TO RANDOM" in m and "no network" in m for m in warnings)


def _cheap_vgg19_state() -> dict[str, torch.Tensor]:
    """A complete vgg19 state dict whose tensors (but one) are broadcast constants: tiny on disk."""
    with torch.device("meta"):
        shapes = {key: value.shape for key, value in vgg19(weights=None).state_dict().items()}
    state = {key: torch.full((1,), float(i)).expand(shape) for i, (key, shape) in enumerate(shapes.items())}
    state["features.0.weight"] = torch.randn(shapes["features.0.weight"])
    return state


def test_local_weights_file_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # every parameter is overwritten by load_state_dict, so skipping the random init is safe
    monkeypatch.setattr(torchvision.models, "vgg19", _fast_vgg19)
    state = _cheap_vgg19_state()
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    features = load_vgg19_features(str(path))
    torch.testing.assert_close(features[0].weight, state["features.0.weight"])
    torch.testing.assert_close(features[34].bias, state["features.34.bias"].contiguous())


def test_wrong_weights_files_name_the_path(tmp_path: Path) -> None:
    wrong_model = tmp_path / "generator.pth"
    torch.save(Generator(num_blocks=1, channels=8).state_dict(), wrong_model)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file" * 10)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    for path in (wrong_model, garbage, tensor):
        with torch.device("meta"), pytest.raises(UserError) as info:
            load_vgg19_features(str(path))
        assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_vgg19_features(str(tmp_path / "missing.pth"))


def test_bicubic_global_skip_starts_at_bicubic_with_no_extra_parameters() -> None:
    torch.manual_seed(0)
    lr = torch.rand(2, 3, 12, 10)
    model = Generator(num_blocks=2, channels=8, scale=4, norm="none", global_skip="bicubic")
    bicubic = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    torch.testing.assert_close(model(lr), bicubic * 2 - 1)
    paper = sum(p.numel() for p in Generator().parameters())
    assert sum(p.numel() for p in Generator(global_skip="bicubic").parameters()) == paper
    # Once the residual branch is non-zero the output moves away from bicubic.
    torch.nn.init.normal_(model.tail.weight, std=0.1)
    assert not torch.allclose(model(lr), bicubic * 2 - 1)
    with pytest.raises(ValueError, match="global_skip"):
        Generator(global_skip="bilinear")
