"""Scan/validation, the DALI and PIL training loaders, and the validation set (CPU; GPU marked)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srgan_dist.config import DataConfig
from srgan_dist.data import DataError, build_train_loader, build_val_set, scan_images
from srgan_dist.data import scan as scan_module
from srgan_dist.data import train_loader as train_loader_module
from srgan_dist.data.resize import bicubic_downscale

CPU = torch.device("cpu")
LOADERS = ("dali", "pil")


def real_photo(name: str = "astronaut") -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return getattr(data, name)()


def save(array: np.ndarray, path: Path, **kwargs) -> str:
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


def make_loader(files, kind, **overrides):
    kwargs = dict(
        loader=kind,
        scale=4,
        hr_patch_size=16,
        batch_size=2,
        rank=0,
        world_size=1,
        device=CPU,
        seed=0,
        num_threads=1 if kind == "dali" else 0,
    )
    kwargs.update(overrides)
    return build_train_loader(files, **kwargs)


def to_uint8_hr(hr_CHW: torch.Tensor) -> np.ndarray:
    return np.round((hr_CHW.permute(1, 2, 0).numpy() + 1.0) * 127.5).astype(np.uint8)


def to_uint8_lr(lr_CHW: torch.Tensor) -> np.ndarray:
    return np.round(lr_CHW.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- sharding


@pytest.fixture(scope="module")
def solid_files(tmp_path_factory) -> list[str]:
    """10 flat-colour images: the grey level of a crop tells which file it came from."""
    folder = tmp_path_factory.mktemp("solid")
    return [save(np.full((24, 24, 3), 20 * i + 5, np.uint8), folder / f"{i}.png") for i in range(10)]


def file_ids(hr_BCHW: torch.Tensor) -> list[int]:
    levels = ((hr_BCHW[:, 0, 0, 0] + 1.0) * 127.5).round().long()
    return [(int(level) - 5) // 20 for level in levels]


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_disjoint_and_equally_long(solid_files, kind, world_size):
    seen_per_epoch: list[list[set[int]]] = [[], []]
    lengths = set()
    for rank in range(world_size):
        loader = make_loader(solid_files, kind, rank=rank, world_size=world_size, batch_size=2)
        lengths.add(loader.batches_per_epoch)
        for epoch in range(2):
            ids: list[int] = []
            for _ in range(loader.batches_per_epoch):
                lr, hr = next(loader)
                assert lr.shape == (2, 3, 4, 4) and hr.shape == (2, 3, 16, 16)
                ids += file_ids(hr)
            assert loader.state_dict() == {"epoch": epoch + 1, "position": 0}
            seen_per_epoch[epoch].append(set(ids))
        loader.close()
    assert len(lengths) == 1  # every rank runs the same number of steps
    for shards in seen_per_epoch:
        for a in range(world_size):
            for b in range(a + 1, world_size):
                assert not shards[a] & shards[b], f"ranks {a} and {b} share files"
        assert set().union(*shards) == set(range(10))  # the shards cover the data set
    assert seen_per_epoch[0] != seen_per_epoch[1]  # reshuffled between epochs


def test_pil_shard_order_matches_dali_padding_rule():
    indices = train_loader_module.shard_indices(10, rank=0, world_size=3, batch_size=4, seed=1, epoch=0)
    assert len(indices) == 4 and indices[-1] == indices[-2]  # shard of 3 padded with its last file
    assert train_loader_module.batches_per_epoch(10, 3, 4) == 1


def test_tiny_file_list_is_repeated_to_fill_a_batch(solid_files):
    loader = make_loader(solid_files[:2], "pil", batch_size=4)
    _lr, hr = next(loader)
    assert hr.shape[0] == 4 and set(file_ids(hr)) == {0, 1}


@pytest.mark.parametrize("kind", LOADERS)
def test_position_epoch_and_resume(solid_files, kind):
    loader = make_loader(solid_files, kind, batch_size=4, start_epoch=3)
    assert loader.batches_per_epoch == 3 and loader.state_dict() == {"epoch": 3, "position": 0}
    next(loader)
    assert loader.state_dict() == {"epoch": 3, "position": 1}
    next(loader), next(loader)
    assert loader.state_dict() == {"epoch": 4, "position": 0}
    loader.close()


# --------------------------------------------------------------------------- file order


def read_order(files, kind, *, epochs=2, **overrides) -> list[list[int]]:
    """The file ids one loader reads, per epoch (padding included)."""
    loader = make_loader(files, kind, **overrides)
    try:
        return [
            [i for _ in range(loader.batches_per_epoch) for i in file_ids(next(loader)[1])]
            for _ in range(epochs)
        ]
    finally:
        loader.close()


@pytest.mark.parametrize("kind", LOADERS)
def test_file_order_follows_the_seed(solid_files, kind):
    first = read_order(solid_files, kind, seed=1)
    assert read_order(solid_files, kind, seed=1) == first
    other = read_order(solid_files, kind, seed=999)
    assert other != first
    for order in (first, other):
        assert all(sorted(epoch) == list(range(10)) for epoch in order)  # each a permutation
        assert order[0] != order[1]  # reshuffled every epoch


@pytest.mark.parametrize("kind", LOADERS)
def test_every_rank_agrees_on_the_global_order(solid_files, kind):
    """Rank shards, padding dropped and put side by side, are the one-rank order of that seed."""
    global_order = read_order(solid_files, kind, seed=7, batch_size=2)
    world_size, num_files = 3, len(solid_files)
    shards = [
        read_order(solid_files, kind, seed=7, batch_size=2, rank=r, world_size=world_size) for r in range(3)
    ]
    for epoch in range(2):
        joined = []
        for rank, shard in enumerate(shards):
            size = num_files * (rank + 1) // world_size - num_files * rank // world_size
            assert set(shard[epoch][size:]) <= {shard[epoch][size - 1]}  # padding repeats the last file
            joined += shard[epoch][:size]
        assert joined == global_order[epoch]


@pytest.mark.parametrize("kind", LOADERS)
def test_resume_reads_what_an_uninterrupted_run_reads(solid_files, kind):
    uninterrupted = read_order(solid_files, kind, epochs=3, seed=3)
    assert read_order(solid_files, kind, epochs=2, seed=3, start_epoch=1) == uninterrupted[1:]


@pytest.mark.parametrize("world_size", [1, 2])
def test_dali_and_pil_read_files_in_the_same_order(solid_files, world_size):
    for rank in range(world_size):
        kwargs = dict(seed=5, rank=rank, world_size=world_size, batch_size=2, start_epoch=4)
        assert read_order(solid_files, "dali", **kwargs) == read_order(solid_files, "pil", **kwargs)


# --------------------------------------------------------------------------- alignment / closeness


def dihedral(image: np.ndarray) -> list[np.ndarray]:
    variants = []
    for transpose in (False, True):
        base = image.transpose(1, 0, 2) if transpose else image
        for flip_v in (False, True):
            for flip_h in (False, True):
                out = base[::-1] if flip_v else base
                variants.append(np.ascontiguousarray(out[:, ::-1] if flip_h else out))
    return variants


@pytest.mark.parametrize("kind", LOADERS)
def test_hr_lr_aligned_after_flips_and_rotations(tmp_path, kind):
    """A patch the size of the image: every HR is one of the 8 flips/rotations, LR matches it."""
    photo = real_photo()[100:164, 180:244].copy()  # 64x64 of the astronaut's face and suit
    path = save(photo, tmp_path / "patch.png")
    loader = make_loader([path], kind, hr_patch_size=64, batch_size=8)
    variants = dihedral(photo)
    seen = set()
    for _ in range(3):
        lr, hr = next(loader)
        for b in range(hr.shape[0]):
            hr_u8 = to_uint8_hr(hr[b])
            matches = [i for i, v in enumerate(variants) if np.array_equal(v, hr_u8)]
            assert matches, "HR is not a flip/rotation of the image"
            seen.add(matches[0])
            diff = np.abs(bicubic_downscale(hr_u8, 4).astype(float) - to_uint8_lr(lr[b])).mean()
            assert diff < 1.0, f"LR does not match the augmented HR (mean abs diff {diff:.2f})"
            assert torch.allclose(lr[b] * 255, (lr[b] * 255).round(), atol=1e-3)  # 8-bit LR
    loader.close()
    assert len(seen) >= 4  # the augmentations really vary


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_dali_cubic_antialias_close_to_pil_bicubic_on_real_photos(tmp_path, name):
    photo = real_photo(name)
    path = save(photo, tmp_path / f"{name}.png")
    loader = make_loader([path], "dali", hr_patch_size=192, batch_size=4)
    lr, hr = next(loader)
    diffs = [
        np.abs(bicubic_downscale(to_uint8_hr(hr[b]), 4).astype(float) - to_uint8_lr(lr[b])).mean()
        for b in range(4)
    ]
    loader.close()
    assert max(diffs) < 1.0, diffs  # measured 0.14-0.16 grey levels


def test_missing_dali_falls_back_to_pil_loudly(solid_files, monkeypatch, caplog):
    monkeypatch.setattr(train_loader_module, "dali_available", lambda: False)
    with caplog.at_level(logging.INFO):
        loader = make_loader(solid_files, "dali")
    assert any("pil training loader" in r.getMessage() for r in caplog.records)
    assert any(
        "DALI cannot be imported" in r.message and r.levelno == logging.WARNING for r in caplog.records
    )
    next(loader)
    loader.close()


# --------------------------------------------------------------------------- scan / validation


def rgb(height=40, width=40, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def mixed_folder(tmp_path) -> tuple[Path, dict[str, str], dict[str, str]]:
    """Good, convertible and bad files; returns (folder, {name: bad reason}, {name: rule})."""
    root = tmp_path / "hr"
    (root / "sub").mkdir(parents=True)
    save(rgb(), root / "good.png")
    save(rgb(seed=1), root / "sub" / "good.jpg", quality=95)
    save(rgb(seed=2), root / "no_extension", format="PNG")  # found by content
    Image.fromarray(rgb()[..., 0]).save(root / "gray.png")
    Image.fromarray(rgb()).convert("P").save(root / "palette.png")
    Image.fromarray(np.dstack([rgb(), np.full((40, 40), 128, np.uint8)])).save(root / "alpha.png")
    Image.fromarray(rgb()[..., 0].astype(np.uint16) * 257).save(root / "deep16.png")
    Image.fromarray(rgb()).convert("CMYK").save(root / "cmyk.jpg")
    save(rgb(), root / "container.tif")
    save(rgb(), root / "container.webp", lossless=True)
    (root / "empty.png").write_bytes(b"")
    (root / "notes.png").write_text("not an image at all")
    full = (root / "good.png").read_bytes()
    (root / "truncated.png").write_bytes(full[: len(full) // 2])
    jpeg = (root / "sub" / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    save(rgb(), root / "animation.gif")
    save(rgb(8, 40), root / "small.png")
    save(rgb(300, 300), root / "huge.png")
    bad = {
        "empty.png": "zero-byte",
        "notes.png": "not an image",
        "truncated.png": "truncated",
        "truncated.jpg": "truncated",
        "animation.gif": "unsupported image format GIF",
        "small.png": "too small",
        "huge.png": "too large",
    }
    converted = {
        "gray.png": "gray replicated",
        "palette.png": "palette",
        "alpha.png": "alpha",
        "deep16.png": "16-bit",
        "cmyk.jpg": "CMYK",
        "container.tif": "TIFF",
        "container.webp": "WebP",
    }
    return root, bad, converted


def data_cfg(**kwargs) -> DataConfig:
    return DataConfig(max_pixels=200 * 200, num_threads=1, **kwargs)


def test_scan_error_policy_names_every_bad_file(mixed_folder, tmp_path):
    root, bad, _ = mixed_folder
    with pytest.raises(DataError) as raised:
        scan_images(str(root), role="data.train", min_side=16, data_cfg=data_cfg(), cache_dir=tmp_path / "c")
    message = str(raised.value)
    assert message.startswith("data.train:") and "data.on_bad_file=skip" in message
    for name, reason in bad.items():
        line = next(line for line in message.splitlines() if line.strip().startswith(str(root / name)))
        assert reason in line, (name, line)


def test_scan_skip_policy_keeps_good_and_converted(mixed_folder, tmp_path):
    root, bad, converted = mixed_folder
    cache = tmp_path / "c"
    result = scan_images(
        str(root), role="data.train", min_side=16, data_cfg=data_cfg(on_bad_file="skip"), cache_dir=cache
    )
    assert {Path(p).name: r for p, r in result.skipped}.keys() == bad.keys()
    rules = {Path(p).name: rule for p, rule in result.converted}
    assert rules.keys() == converted.keys()
    for name, fragment in converted.items():
        assert fragment in rules[name]
    assert len(result.files) == 3 + len(converted)
    for path in result.files:
        assert os.path.isabs(path)
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.format in ("PNG", "JPEG")
    gray = next(f for f, s in zip(result.files, result.sources, strict=True) if s.endswith("gray.png"))
    pixels = np.asarray(Image.open(gray))
    assert Path(gray).is_relative_to(cache) and Path(gray).stem == "gray"
    assert (pixels[..., 0] == pixels[..., 2]).all()
    # the decoder takes every usable and converted file
    loader = make_loader(result.files, "dali", batch_size=len(result.files))
    _lr, hr = next(loader)
    loader.close()
    assert hr.shape[0] == len(result.files)


def test_full_verification_catches_corrupt_pixel_data(tmp_path):
    root = tmp_path / "hr"
    root.mkdir()
    save(rgb(), root / "good.png")
    raw = bytearray((root / "good.png").read_bytes())
    start = raw.index(b"IDAT") + 8
    raw[start : start + 200] = bytes(200)  # keeps IEND: header mode cannot tell
    (root / "corrupt.png").write_bytes(bytes(raw))
    header = scan_images(
        str(root), role="data.train", min_side=16, data_cfg=data_cfg(), cache_dir=tmp_path / "a"
    )
    assert len(header.files) == 2
    with pytest.raises(DataError, match=r"corrupt\.png: corrupt"):
        scan_images(
            str(root),
            role="data.train",
            min_side=16,
            data_cfg=data_cfg(verify="full"),
            cache_dir=tmp_path / "b",
        )


def test_empty_usable_set_is_an_error(tmp_path):
    root = tmp_path / "hr"
    root.mkdir()
    (root / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no usable images"):
        scan_images(
            str(root), role="data.val", min_side=16, data_cfg=data_cfg(on_bad_file="skip"), cache_dir=tmp_path
        )
    with pytest.raises(DataError, match=r"data\.train: no image source"):
        scan_images("", role="data.train", min_side=16, data_cfg=data_cfg(), cache_dir=tmp_path)


def test_list_file_source(tmp_path):
    save(rgb(), tmp_path / "a.png")
    save(rgb(), tmp_path / "b.png")
    (tmp_path / "list.txt").write_text("# HR photos\na.png\n\n" + str(tmp_path / "b.png") + "\n")
    result = scan_images(
        str(tmp_path / "list.txt"),
        role="data.train",
        min_side=16,
        data_cfg=data_cfg(),
        cache_dir=tmp_path / "c",
    )
    assert [Path(p).name for p in result.files] == ["a.png", "b.png"]


def test_scan_cache_reuse(tmp_path, monkeypatch):
    root = tmp_path / "hr"
    root.mkdir()
    for i in range(4):
        save(rgb(seed=i), root / f"{i}.png")
    cfg, cache = data_cfg(), tmp_path / "cache"
    first = scan_images(str(root), role="data.train", min_side=16, data_cfg=cfg, cache_dir=cache)
    probed: list[str] = []
    real_probe = scan_module._probe
    monkeypatch.setattr(
        scan_module, "_probe", lambda path, verify: probed.append(path) or real_probe(path, verify)
    )
    again = scan_images(str(root), role="data.train", min_side=16, data_cfg=cfg, cache_dir=cache)
    assert again.files == first.files and probed == []  # nothing re-read
    save(rgb(10, 10), root / "2.png")  # changed: now too small
    os.utime(root / "2.png", ns=(1, 1))
    changed = scan_images(
        str(root), role="data.train", min_side=16, data_cfg=data_cfg(on_bad_file="skip"), cache_dir=cache
    )
    assert probed == [str(root / "2.png")]
    assert [Path(p).name for p, _ in changed.skipped] == ["2.png"]


def test_val_set_is_deterministic_whole_images(tmp_path):
    photo = real_photo("coffee")
    files = [save(photo[:101, :150], tmp_path / "b.png"), save(photo[200:, 300:], tmp_path / "a.png")]
    first = build_val_set(files, scale=4, device=CPU)
    second = build_val_set(list(reversed(files)), scale=4, device=CPU)
    # sorted by path, whatever order the files came in: a.png (200x300) before b.png (cropped 100x148)
    assert [tuple(v.hr.shape) for v in first] == [(1, 3, 200, 300), (1, 3, 100, 148)]
    for one, two in zip(first, second, strict=True):
        assert torch.equal(one.lr, two.lr) and torch.equal(one.hr, two.hr)
    b = first[1]
    assert b.hr.shape == (1, 3, 100, 148) and b.lr.shape == (1, 3, 25, 37)
    hr_u8 = np.round(b.hr[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.array_equal(hr_u8, photo[:100, :148])
    assert np.array_equal(
        np.round(b.lr[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8), bicubic_downscale(hr_u8, 4)
    )
    assert torch.allclose(b.lr * 255, (b.lr * 255).round(), atol=1e-4)


# --------------------------------------------------------------------------- GPU


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
def test_gpu_mixed_decode_gives_aligned_cuda_batches(tmp_path):
    photo = real_photo()
    files = [save(photo, tmp_path / "a.jpg", quality=95), save(photo[::-1].copy(), tmp_path / "b.png")]
    loader = make_loader(files, "dali", device=torch.device("cuda", 0), hr_patch_size=96, batch_size=4)
    lr, hr = next(loader)
    loader.close()
    assert lr.device.type == "cuda" and hr.device.type == "cuda"
    assert lr.shape == (4, 3, 24, 24) and hr.dtype == torch.float32
    for b in range(4):
        hr_u8 = to_uint8_hr(hr[b].cpu())
        assert np.abs(bicubic_downscale(hr_u8, 4).astype(float) - to_uint8_lr(lr[b].cpu())).mean() < 1.0


@pytest.mark.gpu
@gpu
def test_gpu_val_set_on_device(tmp_path):
    path = save(real_photo("chelsea"), tmp_path / "c.png")
    (pair,) = build_val_set([path], scale=4, device=torch.device("cuda"))
    assert pair.lr.is_cuda and pair.hr.is_cuda


def jpeg_420(tmp_path: Path) -> str:
    """A real photo as a 4:2:0 JPEG: chroma at half resolution, so upsampling matters at colour edges."""
    return save(real_photo("astronaut"), tmp_path / "a420.jpg", quality=90, subsampling=2)


def dali_decode(path: str, **decoder_kwargs) -> np.ndarray:
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=1, num_threads=1, device_id=0 if decoder_kwargs["device"] == "mixed" else None)
    def decode():
        encoded, _ = fn.readers.file(files=[path])
        return fn.decoders.image(encoded, **decoder_kwargs)

    pipe = decode()
    pipe.build()
    (out,) = pipe.run()
    return np.array(out.as_cpu()[0]) if decoder_kwargs["device"] == "mixed" else np.array(out[0])


def load_rgb_array(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def test_mixed_decoder_uses_libjpeg_fancy_upsampling():
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import backend

    from srgan_dist.data.dali_pipeline import decoder_kwargs, sr_train_pipeline

    assert decoder_kwargs("mixed")["jpeg_fancy_upsampling"] is True
    assert "jpeg_fancy_upsampling" not in decoder_kwargs("cpu")  # libjpeg-turbo's default already
    # The pinned DALI still knows the argument (a rename would fail only at build, on a GPU).
    assert backend.GetSchema("decoders__ImageCrop").HasArgument("jpeg_fancy_upsampling")
    # ...and the training graph passes it: serialize() needs no GPU.
    graph = {
        device: sr_train_pipeline(
            input_batches=iter(()), reads_files=True, decode_device=device, scale=4, hr_patch_size=16,
            batch_size=2, num_threads=1, device_id=None,
        ).serialize()
        for device in ("mixed", "cpu")
    }  # fmt: skip
    assert b"jpeg_fancy_upsampling" in graph["mixed"] and b"jpeg_fancy_upsampling" not in graph["cpu"]


def test_cpu_decoder_matches_pil_on_420_jpeg(tmp_path):
    pytest.importorskip("nvidia.dali")
    from srgan_dist.data.dali_pipeline import decoder_kwargs

    path = jpeg_420(tmp_path)
    diff = np.abs(dali_decode(path, **decoder_kwargs("cpu")).astype(int) - load_rgb_array(path))
    assert diff.max() <= 1  # both libjpeg-turbo (equal here); the reference the GPU test uses


@pytest.mark.gpu
@gpu
def test_gpu_mixed_decode_of_420_jpeg_matches_pil(tmp_path):
    from srgan_dist.data.dali_pipeline import decoder_kwargs

    path = jpeg_420(tmp_path)
    pil = load_rgb_array(path)
    fancy = np.abs(dali_decode(path, **decoder_kwargs("mixed")).astype(int) - pil)
    plain = np.abs(dali_decode(path, **{**decoder_kwargs("mixed"), "jpeg_fancy_upsampling": False}) - pil)
    # nvJPEG's IDCT is not libjpeg's, so a small difference remains; the upsampling one goes.
    assert fancy.mean() < 0.5, (fancy.mean(), fancy.max())
    assert fancy.mean() < plain.mean(), (fancy.mean(), plain.mean())
