"""evaluate: numbers checked against PSNR/SSIM computed independently in the test."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo
from PIL import Image
from skimage.metrics import structural_similarity

from srgan_dist.cli import main
from srgan_dist.generator_io import GeneratorSpec, save_generator

SCALE = 4


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    spec = GeneratorSpec(scale=SCALE, num_blocks=2, channels=16, norm="batch", stage="srresnet")
    return save_generator(spec.build(), spec, tmp_path / "generator_srresnet.safetensors")


def independent_y(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def independent_psnr(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    a, b = (
        independent_y(sr)[border:-border, border:-border],
        independent_y(hr)[border:-border, border:-border],
    )
    return 10 * math.log10(255.0**2 / np.mean((a - b) ** 2))


def independent_ssim(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    a, b = (
        independent_y(sr)[border:-border, border:-border],
        independent_y(hr)[border:-border, border:-border],
    )
    return structural_similarity(
        a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )


def model_sr(weights: Path, lr: np.ndarray) -> np.ndarray:
    """The generator run by hand: safetensors state dict, one forward pass, clamp, round."""
    from safetensors.torch import load_file

    model = GeneratorSpec(scale=SCALE, num_blocks=2, channels=16, norm="batch").build()
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(lr.copy()).permute(2, 0, 1)[None].float() / 255)
    unit = ((out[0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)
    return np.rint(unit * 255).astype(np.uint8)


def test_evaluate_matches_an_independent_computation(weights: Path, tmp_path: Path, capsys) -> None:
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    photos = {"a.png": make_photo((66, 50), 1), "b.png": make_photo((48, 45), 2)}  # not multiples of 4
    for name, photo in photos.items():
        Image.fromarray(photo).save(hr_dir / name)
    report_path = tmp_path / "eval.json"
    rc = main(["evaluate", "--weights", str(weights), "--hr", str(hr_dir), "--json", str(report_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "a.png" in out and "gain over bicubic" in out
    report = json.loads(report_path.read_text())

    for entry, (name, photo) in zip(report["images"], sorted(photos.items()), strict=True):
        hr = photo[: photo.shape[0] // 4 * 4, : photo.shape[1] // 4 * 4]
        height, width = hr.shape[:2]
        lr = np.asarray(Image.fromarray(hr).resize((width // 4, height // 4), Image.Resampling.BICUBIC))
        bicubic = np.asarray(Image.fromarray(lr).resize((width, height), Image.Resampling.BICUBIC))
        sr = model_sr(weights, lr)
        assert entry["name"] == name and entry["hr_size"] == [width, height]
        assert entry["psnr_bicubic"] == pytest.approx(independent_psnr(bicubic, hr, SCALE), abs=1e-9)
        assert entry["psnr_model"] == pytest.approx(independent_psnr(sr, hr, SCALE), abs=1e-3)
        assert entry["ssim_bicubic"] == pytest.approx(independent_ssim(bicubic, hr, SCALE), abs=1e-6)
        assert entry["ssim_model"] == pytest.approx(independent_ssim(sr, hr, SCALE), abs=1e-4)

    psnr_model = np.mean([e["psnr_model"] for e in report["images"]])
    psnr_bicubic = np.mean([e["psnr_bicubic"] for e in report["images"]])
    assert report["mean"]["psnr_model"] == pytest.approx(psnr_model)
    assert report["gain"]["psnr"] == pytest.approx(psnr_model - psnr_bicubic)
    assert report["crop_border"] == SCALE and "antialiased" in report["lr_source"]


def test_evaluate_reads_given_lr_images(weights: Path, tmp_path: Path, capsys) -> None:
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    hr = make_photo((50, 42), 3)  # LR below is 12 x 10, so HR is cropped to 48 x 40
    Image.fromarray(hr).save(hr_dir / "img.png")
    lr = np.asarray(Image.fromarray(hr[:40, :48]).resize((12, 10), Image.Resampling.NEAREST))  # not bicubic
    Image.fromarray(lr).save(lr_dir / f"imgx{SCALE}.png")
    report_path = tmp_path / "eval.json"
    argv = ["evaluate", "--weights", str(weights), "--hr", str(hr_dir), "--lr-dir", str(lr_dir)]
    assert main([*argv, "--json", str(report_path)]) == 0
    entry = json.loads(report_path.read_text())["images"][0]
    bicubic = np.asarray(Image.fromarray(lr).resize((48, 40), Image.Resampling.BICUBIC))
    assert entry["hr_size"] == [48, 40]
    assert entry["psnr_bicubic"] == pytest.approx(independent_psnr(bicubic, hr[:40, :48], SCALE), abs=1e-9)

    (lr_dir / f"imgx{SCALE}.png").rename(lr_dir / "other.png")
    assert main(argv) == 1  # that image is listed as not scored
    assert "no LR image for img.png" in capsys.readouterr().err


def test_evaluate_scale_mismatch_and_lpips_availability(weights: Path, tmp_path: Path, capsys) -> None:
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    Image.fromarray(make_photo((32, 32), 4)).save(hr_dir / "x.png")
    assert main(["evaluate", "--weights", str(weights), "--hr", str(hr_dir), "--scale", "2"]) == 2
    assert "--scale 2 differs from the generator's scale 4" in capsys.readouterr().err
    if importlib.util.find_spec("lpips") is None:
        assert main(["evaluate", "--weights", str(weights), "--hr", str(hr_dir), "--lpips"]) == 0
        assert "LPIPS: unavailable: the lpips package is not installed" in capsys.readouterr().out
