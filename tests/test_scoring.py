"""One way to score an image: training validation and ``evaluate`` read, downscale and score alike."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo
from PIL import Image

from srgan_dist.config import DataConfig
from srgan_dist.data import build_val_set, scan_images
from srgan_dist.evaluate import evaluate
from srgan_dist.generator_io import GeneratorSpec
from srgan_dist.infer import Tiling
from srgan_dist.models import Generator
from srgan_dist.pictures import ImageReadError, read_rgb8
from srgan_dist.train.validation import Validator

SCALE = 4
CPU = torch.device("cpu")


def rgba_photo(size: tuple[int, int], seed: int) -> np.ndarray:
    """HxWx4: left third transparent (over dark colour), middle third half-transparent, rest opaque."""
    rgb = make_photo(size, seed)
    width = size[0]
    alpha = np.full(rgb.shape[:2], 255, dtype=np.uint8)
    alpha[:, : width // 3] = 0
    alpha[:, width // 3 : 2 * width // 3] = 128
    rgb[:, : width // 3] //= 4  # dark under the transparent part: dropping alpha would show it
    return np.dstack([rgb, alpha])


def test_read_rgb8_composites_alpha_over_white(tmp_path: Path) -> None:
    rgba = rgba_photo((48, 40), 5)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    rgb, alpha = read_rgb8(path).astype(int), rgba[..., 3]
    assert (rgb[alpha == 0] == 255).all()
    assert np.array_equal(rgb[alpha == 255], rgba[..., :3][alpha == 255])
    blended = (rgba[..., :3].astype(float) * 128 + 255 * 127) / 255
    assert np.abs(rgb[alpha == 128] - blended[alpha == 128]).max() <= 1
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"broken\.png: not a readable image"):
        read_rgb8(tmp_path / "broken.png")


def test_validation_and_evaluate_give_the_same_scores(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    Image.fromarray(make_photo((66, 50), 1)).save(hr_dir / "rgb.png")  # not multiples of 4
    Image.fromarray(rgba_photo((57, 46), 2)).save(hr_dir / "rgba.png")
    torch.manual_seed(0)
    model = Generator(num_blocks=1, channels=8, scale=SCALE).eval()
    spec = GeneratorSpec(scale=SCALE, num_blocks=1, channels=8, norm="batch")

    # validation as training runs it: scan_images rewrites the RGBA file, build_val_set reads that
    scanned = scan_images(
        str(hr_dir),
        role="data.val",
        min_side=16,
        data_cfg=DataConfig(num_threads=1),
        cache_dir=tmp_path / "c",
    )
    assert [Path(path).name for path, _ in scanned.converted] == ["rgba.png"]
    val_set = build_val_set(scanned.files, scale=SCALE, device=CPU)
    # the model runs on whole images in validation, so evaluate runs untiled to match exactly
    report = evaluate(model, spec, hr_dir, tiling=Tiling(tile=0))

    by_name = {Path(scores.name).stem: scores for scores in report.images}
    # build_val_set keeps the order of its sorted paths; a converted copy keeps its source's stem
    val_names = [Path(path).stem for path in sorted(scanned.files)]
    assert sorted(by_name) == sorted(val_names) == ["rgb", "rgba"]
    for name, item in zip(val_names, val_set, strict=True):
        expected = by_name[name]
        assert tuple(item.hr.shape[-2:][::-1]) == expected.hr_size
        sums, grid = Validator([item], [], SCALE, CPU, grid_crop=16).run(model, contextlib.nullcontext)
        assert grid is None
        assert sums.tolist() == [
            expected.psnr_model,
            expected.ssim_model,
            expected.psnr_bicubic,
            expected.ssim_bicubic,
            1.0,
        ]
    assert by_name["rgba"].psnr_model != by_name["rgb"].psnr_model  # two different images really scored

    sums, grid = Validator(val_set, val_set[:1], SCALE, CPU, grid_crop=16).run(model, contextlib.nullcontext)
    assert sums[4] == 2 and grid is not None and grid.shape == (3, 24, 64)  # bicubic | SR | HR tiles


def test_validation_runs_without_cudnn_autotuning_and_restores_it() -> None:
    """Each validation image has its own size: cuDNN must not autotune each one (training turns
    ``cudnn.benchmark`` on). The flag is off while the generator runs and back after, even when
    the generator fails."""
    from srgan_dist.data.validation import ValImage

    seen: list[bool] = []

    class Recording(torch.nn.Module):
        def __init__(self, fail: bool = False) -> None:
            super().__init__()
            self.fail = fail

        def forward(self, lr: torch.Tensor) -> torch.Tensor:
            seen.append(torch.backends.cudnn.benchmark)
            if self.fail:
                raise RuntimeError("generator failed")
            return torch.nn.functional.interpolate(lr, scale_factor=SCALE) * 2 - 1

    item = ValImage(torch.rand(1, 3, 6, 5), torch.rand(1, 3, 6 * SCALE, 5 * SCALE))
    validator = Validator([item], [], SCALE, CPU, grid_crop=16)
    was = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True
        validator.run(Recording(), contextlib.nullcontext)
        assert seen == [False] and torch.backends.cudnn.benchmark is True
        with pytest.raises(RuntimeError, match="generator failed"):
            validator.run(Recording(fail=True), contextlib.nullcontext)
        assert seen == [False, False] and torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = was
