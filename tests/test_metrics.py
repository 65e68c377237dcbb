"""PSNR/SSIM on Y: hand-computed values, input formats, border crop, skimage cross-check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from srgan_dist.metrics import psnr_y, ssim_y, to_y

Y_WEIGHTS_SUM = 65.481 + 128.553 + 24.966  # MATLAB rgb2ycbcr, RGB in [0, 1] → Y in [16, 235]


def _random_image(seed: int, size: tuple[int, int] = (40, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _smooth_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A structured HR image and a noisy, slightly shifted "SR" of it (SSIM well inside (0, 1))."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:72]
    base = np.stack([128 + 100 * np.sin(xx / 7 + c) * np.cos(yy / 9) for c in range(3)], axis=-1)
    hr = np.clip(base, 0, 255).astype(np.uint8)
    sr = np.clip(np.roll(base, 1, axis=1) + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return sr, hr


def _independent_y(image: np.ndarray) -> np.ndarray:
    """Y computed in the test, channel by channel (no shared code with srgan_dist.metrics)."""
    r, g, b = (image[..., c].astype(np.float64) for c in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def test_to_y_known_values() -> None:
    black = np.zeros((2, 2, 3), np.uint8)
    white = np.full((2, 2, 3), 255, np.uint8)
    np.testing.assert_allclose(to_y(black), 16.0)
    np.testing.assert_allclose(to_y(white), 16.0 + Y_WEIGHTS_SUM)
    assert pytest.approx(235.0) == 16.0 + Y_WEIGHTS_SUM
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(to_y(red), 16.0 + 65.481)


@pytest.mark.parametrize("offset", [1, 5, 20])
def test_psnr_of_uniform_offset(offset: int) -> None:
    hr = _random_image(0).clip(0, 200).astype(np.uint8)
    sr = hr + np.uint8(offset)  # no overflow: hr <= 200
    delta_y = offset * Y_WEIGHTS_SUM / 255
    expected = 10 * math.log10(255**2 / delta_y**2)
    assert psnr_y(sr, hr) == pytest.approx(expected, abs=1e-9)
    assert psnr_y(sr, hr, crop_border=4) == pytest.approx(expected, abs=1e-9)


def test_psnr_of_offset_in_one_pixel() -> None:
    hr = np.full((10, 10, 3), 100, np.uint8)
    sr = hr.copy()
    sr[3, 4, 1] += 10  # green only: ΔY = 10 * 128.553 / 255 in one pixel of 100
    mse = (10 * 128.553 / 255) ** 2 / 100
    assert psnr_y(sr, hr) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)


def test_identical_images() -> None:
    image = _random_image(1)
    assert psnr_y(image, image.copy()) == math.inf
    assert ssim_y(image, image.copy()) == pytest.approx(1.0, abs=1e-12)


def test_crop_border_removes_border_differences() -> None:
    hr = _random_image(2)
    sr = hr.copy()
    sr[:4] = 255 - sr[:4]  # differ only in a 4-px frame
    sr[-4:] = 0
    sr[:, :4] = 7
    sr[:, -4:] = 250
    assert math.isfinite(psnr_y(sr, hr))
    assert psnr_y(sr, hr, crop_border=4) == math.inf
    assert math.isfinite(psnr_y(sr, hr, crop_border=3))
    assert ssim_y(sr, hr) < 0.99
    assert ssim_y(sr, hr, crop_border=4) == pytest.approx(1.0, abs=1e-12)


def test_uint8_and_tensor_inputs_agree() -> None:
    sr, hr = _smooth_pair(3)

    def as_tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image).permute(2, 0, 1).float() / 255

    for crop in (0, 4):
        psnr = psnr_y(sr, hr, crop)
        ssim = ssim_y(sr, hr, crop)
        for to in (as_tensor, lambda a: as_tensor(a)[None]):
            assert psnr_y(to(sr), to(hr), crop) == pytest.approx(psnr, abs=1e-4)
            assert ssim_y(to(sr), to(hr), crop) == pytest.approx(ssim, abs=1e-6)
        assert psnr_y(as_tensor(sr), hr, crop) == pytest.approx(psnr, abs=1e-4)  # mixed inputs


@pytest.mark.parametrize("crop", [0, 4])
def test_against_skimage(crop: int) -> None:
    sr, hr = _smooth_pair(4)
    sr_y, hr_y = _independent_y(sr), _independent_y(hr)
    if crop:  # skimage does not crop borders: do it here, as BasicSR does before measuring
        sr_y, hr_y = sr_y[crop:-crop, crop:-crop], hr_y[crop:-crop, crop:-crop]
    expected_psnr = peak_signal_noise_ratio(hr_y, sr_y, data_range=255)
    # skimage filters the whole image, then averages the SSIM map over the region 5 px (the
    # 11-tap window's radius) inside the border: exactly the "valid" windows ssim_y uses.
    expected_ssim = structural_similarity(
        hr_y, sr_y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert 0.2 < expected_ssim < 0.95  # a meaningful comparison, not a trivial 0 or 1
    assert psnr_y(sr, hr, crop) == pytest.approx(expected_psnr, abs=1e-3)
    assert ssim_y(sr, hr, crop) == pytest.approx(expected_ssim, abs=1e-3)
    assert ssim_y(sr, hr, crop) == pytest.approx(expected_ssim, abs=1e-9)  # in fact equal


def test_ssim_is_symmetric_and_drops_with_noise() -> None:
    sr, hr = _smooth_pair(5)
    assert ssim_y(sr, hr) == pytest.approx(ssim_y(hr, sr), abs=1e-12)
    noisier = np.clip(hr + np.random.default_rng(6).normal(0, 40, hr.shape), 0, 255).astype(np.uint8)
    assert ssim_y(noisier, hr) < ssim_y(sr, hr)


@pytest.mark.parametrize(
    ("sr", "hr"),
    [
        (np.zeros((16, 16, 3), np.uint8), np.zeros((16, 17, 3), np.uint8)),  # size mismatch
        (np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)),  # grey
        (np.zeros((16, 16, 4), np.uint8), np.zeros((16, 16, 4), np.uint8)),  # RGBA
        (np.zeros((16, 16, 3), np.float32), np.zeros((16, 16, 3), np.float32)),  # float array
        (torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 16)),  # a batch
        (torch.zeros(16, 16, 3), torch.zeros(16, 16, 3)),  # HWC tensor
        (torch.zeros(3, 16, 16, dtype=torch.uint8), torch.zeros(3, 16, 16, dtype=torch.uint8)),
        (torch.zeros(3, 16, 16), torch.zeros(3, 16, 17)),
    ],
)
def test_bad_inputs_raise(sr: object, hr: object) -> None:
    with pytest.raises(ValueError):
        psnr_y(sr, hr)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ssim_y(sr, hr)  # type: ignore[arg-type]


def test_bad_crop_and_tiny_images_raise() -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    for crop in (-1, 8):
        with pytest.raises(ValueError, match="crop_border"):
            psnr_y(image, image, crop)
    with pytest.raises(ValueError, match="11x11"):
        ssim_y(image, image, crop_border=3)  # 10x10 left
