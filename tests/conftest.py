"""Shared fixtures: one embedded Ray instance per test session, and small generated photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def make_photo(size: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth, photo-like uint8 HxWx3 image: blurred noise plus a few soft-edged shapes.

    Smooth structure matters: on pure noise no model beats bicubic, so the training tests could
    not tell a working model from a broken one.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 8 + 2, width // 8 + 2, 3))
    image = Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    array = np.asarray(image).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(4):
        cy, cx, radius = rng.integers(0, height), rng.integers(0, width), rng.integers(6, max(8, width // 3))
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
        array[mask] = array[mask] * 0.3 + rng.random(3) * 255 * 0.7
    stripes = 40 * np.sin(xx / rng.uniform(2.0, 6.0))[..., None]
    return np.clip(array + stripes, 0, 255).astype(np.uint8)


def write_photos(folder: Path, count: int, size: tuple[int, int] = (96, 96), seed: int = 0) -> list[Path]:
    """Write ``count`` generated PNG photos into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"photo_{seed}_{index:03d}.png"
        Image.fromarray(make_photo(size, seed * 1000 + index)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole session (starting Ray costs seconds; tests share it)."""
    import ray

    from srgan_dist.embedded_ray import init_embedded_ray

    if not ray.is_initialized():
        init_embedded_ray(num_cpus=4, log_to_driver=True)
    yield ray
    ray.shutdown()
