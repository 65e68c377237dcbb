"""Tiled upscaling: tiled vs untiled agreement, device traffic, eval mode, the upscale command.

Generators here are tiny (2 blocks, 16 channels) and randomly initialised. A random generator's
output barely varies (a few grey levels), which would hide seams, so ``contrasty_generator``
scales its last conv until the output spans most of [0, 1]; tile-edge errors grow with it.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo
from PIL import Image

from srgan_dist import upscale
from srgan_dist.cli import main
from srgan_dist.errors import UserError
from srgan_dist.generator_io import GeneratorSpec, load_generator, save_generator
from srgan_dist.infer import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    MIN_TILE,
    Tiling,
    count_tiles,
    resolve_device,
    tile_layout,
    upscale_rgb,
)
from srgan_dist.models import Generator, generator_output_to_unit
from srgan_dist.pictures import LUMA_WEIGHTS
from srgan_dist.pixels import quantize

SCALE = 4
UNTILED = Tiling(tile=0)


def tiny_spec(stage: str = "srresnet", norm: str = "none") -> GeneratorSpec:
    return GeneratorSpec(scale=SCALE, num_blocks=2, channels=16, norm=norm, stage=stage)


def contrasty_generator(seed: int = 0, norm: str = "none") -> Generator:
    """A random generator whose output spans roughly [0, 1] (std ≈ 0.2) on photos."""
    torch.manual_seed(seed)
    model = tiny_spec(norm=norm).build().eval()
    if norm == "batch":  # non-trivial running statistics, so train-mode BN would differ visibly
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    probe = torch.from_numpy(make_photo((40, 40), 99)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        spread = model(probe).std()
        model.tail.weight.mul_(0.4 / spread)  # [-1, 1] space: std 0.4 there is 0.2 in [0, 1]
        model.tail.bias.zero_()
    return model


def photo_float(size: tuple[int, int], seed: int) -> np.ndarray:
    return make_photo(size, seed).astype(np.float32) / 255.0


def seam_mask(shape_hw: tuple[int, int], tiling: Tiling, band: int = 0) -> np.ndarray:
    """HR pixels where tiles meet: covered by more than one tile, or within ``band`` of an inner edge."""
    masks = []
    for length in shape_hw:
        size, starts = tile_layout(length, tiling.tile, tiling.overlap)
        coverage = np.zeros(length, dtype=int)
        near_edge = np.zeros(length, dtype=bool)
        for start in starts:
            coverage[start : start + size] += 1
            for edge in (start, start + size):
                if 0 < edge < length:
                    near_edge[max(0, edge - band) : edge + band] = True
        masks.append(np.repeat((coverage > 1) | near_edge, SCALE))
    return masks[0][:, None] | masks[1][None, :]


def test_tile_layout_covers_every_axis_evenly_with_the_overlap() -> None:
    for tile, overlap in [(192, 32), (64, 32), (17, 8), (40, 0)]:
        for length in range(1, 400):
            size, starts = tile_layout(length, tile, overlap)
            assert size <= tile or starts == [0]
            assert starts[0] == 0 and starts[-1] + size == length
            steps = [b - a for a, b in itertools.pairwise(starts)]
            assert all(size - step >= overlap for step in steps)
            assert not steps or max(steps) - min(steps) <= 1  # evenly spread
    assert tile_layout(1000, 192, 32) == (171, [0, 138, 276, 414, 553, 691, 829])
    assert tile_layout(500, 0, 0) == (500, [0])


def test_tiled_output_matches_untiled() -> None:
    """Default overlap: ≤ 1 grey level off seams, ≤ 2 at seams; no overlap would fail the same check."""
    model = contrasty_generator()
    image = photo_float((170, 120), seed=1)  # 120 x 170 LR → 2 x 3 tiles of 80
    untiled = quantize(upscale_rgb(model, image, Tiling(tile=0)), 8).astype(int)
    assert untiled.std() > 30, "the fixture must have contrast for seams to show"

    tiling = Tiling(tile=80, overlap=DEFAULT_OVERLAP)
    assert count_tiles(120, 170, tiling) == 6
    diff = np.abs(quantize(upscale_rgb(model, image, tiling), 8).astype(int) - untiled).max(axis=2)
    seams = seam_mask((120, 170), tiling)
    assert 0.2 < seams.mean() < 0.8
    assert diff[~seams].max() <= 1
    assert diff[seams].max() <= 2

    hard_cut = Tiling(tile=80, overlap=0)
    diff_cut = np.abs(quantize(upscale_rgb(model, image, hard_cut), 8).astype(int) - untiled).max(axis=2)
    assert diff_cut[seam_mask((120, 170), hard_cut, band=8)].max() > 2  # the check above can fail


def test_only_current_tiles_reach_the_model_and_batching_is_invisible() -> None:
    model = contrasty_generator(norm="batch")  # eval mode: batch composition must not matter
    image = photo_float((90, 70), seed=2)
    seen: list[tuple[int, ...]] = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    tiling = Tiling(tile=32, overlap=8, batch=3)
    batched = upscale_rgb(model, image, tiling)
    handle.remove()
    tile_shape = (3, tile_layout(70, 32, 8)[0], tile_layout(90, 32, 8)[0])
    assert seen and all(shape[1:] == tile_shape and shape[0] <= 3 for shape in seen)
    assert max(tile_shape) <= 32
    assert sum(shape[0] for shape in seen) == count_tiles(70, 90, tiling)

    one_by_one = upscale_rgb(model, image, Tiling(tile=32, overlap=8, batch=1))
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_untiled_is_the_plain_forward_pass() -> None:
    model = contrasty_generator()
    image = photo_float((24, 20), seed=3)
    expected = generator_output_to_unit(model(torch.from_numpy(image).permute(2, 0, 1)[None]))
    result = upscale_rgb(model, image, Tiling(tile=0))
    assert result.shape == (80, 96, 3)
    np.testing.assert_allclose(result, expected[0].permute(1, 2, 0).detach().numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": -1}, "--tile"),
        ({"tile": 15, "overlap": 0}, "--tile must be 0 .untiled. or at least 16 LR pixels, got 15"),
        ({"tile": 32, "overlap": 17}, "half"),
        ({"batch": 0}, "--batch"),
    ],
)
def test_bad_tiling_is_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Tiling(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(UserError, match=r"--device cuda: CUDA is not available.*--device cpu"):
        resolve_device("cuda")
    assert resolve_device(None).type == "cpu"


def pretend_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_cuda_index_is_checked_against_the_visible_gpus(monkeypatch) -> None:
    pretend_gpus(monkeypatch, 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device(None).type == "cuda"
    with pytest.raises(UserError, match=r"--device cuda:2: this process sees 2 GPU\(s\).*cuda:0 … cuda:1"):
        resolve_device("cuda:2")
    pretend_gpus(monkeypatch, 0)
    with pytest.raises(UserError, match=r"--device cuda:0: CUDA is not available"):
        resolve_device("cuda:0")
    for bad in ("gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "cuda:0:1"):
        with pytest.raises(UserError, match="--device must be cpu, cuda or cuda:N"):
            resolve_device(bad)


@pytest.mark.parametrize("command", ["upscale", "evaluate"])
def test_commands_refuse_a_gpu_index_that_is_not_there(command, monkeypatch, tmp_path, capsys) -> None:
    pretend_gpus(monkeypatch, 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    where = (
        ["--input", str(tmp_path), "--output", str(tmp_path / "out")]
        if command == "upscale"
        else ["--hr", str(tmp_path)]
    )
    assert main([command, "--weights", str(tmp_path / "none.safetensors"), *where, "--device", "cuda:1"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda:1: this process sees 1 GPU(s) (CUDA_VISIBLE_DEVICES='3')" in err
    assert "use --device cuda:0" in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_upscale_matches_cpu() -> None:
    model = contrasty_generator()
    image = photo_float((90, 70), seed=5)
    tiling = Tiling(tile=32, overlap=8, batch=2)
    on_cpu = upscale_rgb(model, image, tiling)
    on_gpu = upscale_rgb(model.to("cuda"), image, tiling, "cuda")
    assert np.abs(on_gpu - on_cpu).max() * 255 < 1.0  # TF32/cuDNN rounding stays below a grey level


def test_cli_defaults_match_the_library() -> None:
    from srgan_dist.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["upscale", "--weights", "w", "--input", "i", "--output", "o"])
    assert (args.tile, args.overlap) == (DEFAULT_TILE, DEFAULT_OVERLAP)
    assert Tiling(tile=MIN_TILE, overlap=0).tile == MIN_TILE  # the smallest tile is allowed
    upscale_help = parser._subparsers._group_actions[0].choices["upscale"].format_help()
    assert f"at least {MIN_TILE}," in " ".join(upscale_help.split())  # the help says the bound


# ---------------------------------------------------------------------------------------------
# The upscale command, end to end


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory with both stages exported (different weights)."""
    run = tmp_path / "run"
    save_generator(contrasty_generator(seed=0), tiny_spec("srresnet"), run / "generator_srresnet.safetensors")
    save_generator(contrasty_generator(seed=1), tiny_spec("srgan"), run / "generator_srgan.safetensors")
    return run


def reference_rgb(run: Path, stage: str, rgb_HWC: np.ndarray, tiling: Tiling = UNTILED) -> np.ndarray:
    """The float result the command should have written (tiny images are one tile anyway)."""
    model, _ = load_generator(run, stage)
    return upscale_rgb(model, rgb_HWC, tiling)


def write_png16(path: Path, rgb16_HWC: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = rgb16_HWC.shape
    rows = b"".join(b"\x00" + rgb16_HWC[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_upscale_handles_every_kind_of_input(run_dir: Path, tmp_path: Path, capsys) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    rgb = make_photo((20, 16), 10)  # 16 x 20
    rotated_exif = Image.Exif()
    rotated_exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(rgb).save(inputs / "exif.png", exif=rotated_exif)
    rgba = np.dstack(
        [make_photo((20, 16), 11), np.linspace(0, 255, 16 * 20).reshape(16, 20).astype(np.uint8)]
    )
    Image.fromarray(rgba).save(inputs / "alpha.png")
    gray8 = make_photo((20, 16), 12)[..., 0]
    Image.fromarray(gray8).save(inputs / "gray.png")
    gray16 = (np.linspace(0, 65535, 16 * 20).reshape(16, 20)).astype(np.uint16)
    Image.fromarray(gray16).save(inputs / "deep.png")
    colour16 = make_photo((20, 16), 15).astype(np.uint16) * 257
    write_png16(inputs / "deep_colour.png", colour16)
    palette = Image.fromarray(make_photo((20, 16), 13)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=16
    )
    palette.save(inputs / "palette.png", transparency=0)
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (inputs / "notes.txt").write_text("not an image extension: ignored")
    whole = inputs / "whole.png"
    Image.fromarray(make_photo((20, 16), 14)).save(whole)
    (inputs / "truncated.png").write_bytes(whole.read_bytes()[:200])

    rc = main(["upscale", "--weights", str(run_dir), "--input", str(inputs), "--output", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "truncated.png" in err and "2 input(s)" in err
    assert sorted(p.name for p in out.iterdir()) == [
        "alpha.png", "deep.png", "deep_colour.png", "exif.png", "gray.png", "palette.png", "whole.png",
    ]  # fmt: skip

    exif = Image.open(out / "exif.png")
    assert exif.mode == "RGB" and exif.size == (64, 80)  # upright: 16 wide x 20 high, x4
    upright = np.rot90(rgb, k=-1).astype(np.float32) / 255
    expected = quantize(reference_rgb(run_dir, "srgan", upright), 8)  # srgan is the final stage
    assert np.abs(np.asarray(exif).astype(int) - expected).max() <= 1

    alpha = Image.open(out / "alpha.png")
    assert alpha.mode == "RGBA" and alpha.size == (80, 64)
    expected_alpha = np.asarray(Image.fromarray(rgba[..., 3]).resize((80, 64), Image.Resampling.BICUBIC))
    assert np.abs(np.asarray(alpha)[..., 3].astype(int) - expected_alpha).max() <= 1
    colour = quantize(reference_rgb(run_dir, "srgan", rgba[..., :3].astype(np.float32) / 255), 8)
    assert np.abs(np.asarray(alpha)[..., :3].astype(int) - colour).max() <= 1

    gray = Image.open(out / "gray.png")
    assert gray.mode == "L" and gray.size == (80, 64)
    gray_rgb = np.repeat((gray8.astype(np.float32) / 255)[..., None], 3, axis=2)
    expected_gray = quantize(reference_rgb(run_dir, "srgan", gray_rgb) @ LUMA_WEIGHTS, 8)
    assert np.abs(np.asarray(gray).astype(int) - expected_gray).max() <= 1

    deep = Image.open(out / "deep.png")
    assert deep.mode.startswith("I") and deep.size == (80, 64)
    deep_values = np.asarray(deep).astype(np.int64)
    deep_rgb = np.repeat((gray16.astype(np.float32) / 65535)[..., None], 3, axis=2)
    expected_deep = quantize(reference_rgb(run_dir, "srgan", deep_rgb) @ LUMA_WEIGHTS, 16).astype(np.int64)
    assert np.abs(deep_values - expected_deep).max() <= 2  # 16-bit precision kept, not 8-bit steps
    assert np.any(deep_values % 257 != 0)

    deep_colour = np.asarray(Image.open(out / "deep_colour.png")).astype(int)  # Pillow reads it as 8-bit
    expected_colour = quantize(reference_rgb(run_dir, "srgan", colour16.astype(np.float32) / 65535), 8)
    assert deep_colour.shape == (64, 80, 3) and np.abs(deep_colour - expected_colour).max() <= 1

    assert Image.open(out / "palette.png").mode == "RGBA"  # palette with transparency keeps it


def test_upscale_single_file_stage_option_and_batching(run_dir: Path, tmp_path: Path) -> None:
    photo = tmp_path / "p.png"
    rgb = make_photo((48, 40), 20)
    Image.fromarray(rgb).save(photo)
    out = tmp_path / "out"
    argv = ["upscale", "--weights", str(run_dir), "--input", str(photo), "--output", str(out)]
    assert main([*argv, "--stage", "srresnet", "--tile", "24", "--overlap", "12", "--batch", "4"]) == 0
    result = np.asarray(Image.open(out / "p.png")).astype(int)
    tiling = Tiling(tile=24, overlap=12, batch=4)
    expected = quantize(reference_rgb(run_dir, "srresnet", rgb.astype(np.float32) / 255, tiling), 8)
    assert result.shape == (160, 192, 3)
    assert np.abs(result - expected).max() <= 1  # the options reached the tiler; srresnet weights
    other = quantize(reference_rgb(run_dir, "srgan", rgb.astype(np.float32) / 255), 8)
    assert np.abs(result - other).max() > 10  # --stage really switched weights


def test_weights_that_are_not_a_generator_give_clear_errors(tmp_path: Path, capsys) -> None:
    photo = tmp_path / "p.png"
    Image.fromarray(make_photo((16, 16), 0)).save(photo)
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for name in ("evil.pt", "evil.safetensors"):
        (tmp_path / name).write_bytes(pickle.dumps(Evil()))
    (tmp_path / "empty_run").mkdir()
    cases = {
        "evil.pt": "expected a .safetensors",
        "evil.safetensors": "not a readable safetensors",
        "empty_run": "no generator_<stage>.safetensors",
        "missing": "no such file",
    }
    for name, message in cases.items():
        argv = [
            "upscale",
            "--weights",
            str(tmp_path / name),
            "--input",
            str(photo),
            "--output",
            str(tmp_path / "o"),
        ]
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not marker.exists(), "weights must never be unpickled"


def test_overwrite_replaces_a_planted_symlink_never_its_target(run_dir: Path, tmp_path: Path, capsys) -> None:
    """A link in the output folder must not redirect a result outside it (issue 20)."""
    photo, out, outside = tmp_path / "x.png", tmp_path / "out", tmp_path / "outside"
    Image.fromarray(make_photo((16, 12), 3)).save(photo)
    out.mkdir()
    outside.mkdir()
    (outside / "victim.png").write_bytes(b"victim")
    (out / "x.png").symlink_to(outside / "victim.png")
    argv = ["upscale", "--weights", str(run_dir), "--input", str(photo), "--output", str(out)]

    assert main(argv) == 2  # the link is an existing result
    assert str(out / "x.png") in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert (outside / "victim.png").read_bytes() == b"victim"
    assert not (out / "x.png").is_symlink() and (out / "x.png").is_file()
    assert Image.open(out / "x.png").size == (16 * SCALE, 12 * SCALE)
    assert sorted(p.name for p in out.iterdir()) == ["x.png"]  # no temporary file left


def test_a_dangling_symlink_counts_as_an_existing_result(run_dir: Path, tmp_path: Path) -> None:
    photo, out = tmp_path / "x.png", tmp_path / "out"
    Image.fromarray(make_photo((16, 12), 3)).save(photo)
    out.mkdir()
    (out / "x.png").symlink_to(tmp_path / "created_outside.png")
    argv = ["upscale", "--weights", str(run_dir), "--input", str(photo), "--output", str(out)]
    assert main(argv) == 2
    assert main([*argv, "--overwrite"]) == 0
    assert not (tmp_path / "created_outside.png").exists()
    assert (out / "x.png").is_file() and not (out / "x.png").is_symlink()


def test_a_tile_too_small_to_be_useful_is_one_line(run_dir: Path, tmp_path: Path, capsys) -> None:
    photo = tmp_path / "p.png"
    Image.fromarray(make_photo((16, 16), 0)).save(photo)
    argv = ["upscale", "--weights", str(run_dir), "--input", str(photo), "--output", str(tmp_path / "o")]
    assert main([*argv, "--tile", "1", "--overlap", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--tile must be 0 (untiled) or at least 16 LR pixels, got 1" in err
    assert not (tmp_path / "o").exists()


def test_long_work_without_a_terminal_logs_progress(
    run_dir: Path, tmp_path: Path, caplog, monkeypatch
) -> None:
    photo = tmp_path / "p.png"
    Image.fromarray(make_photo((48, 40), 0)).save(photo)  # 48 x 40 LR: 3 x 3 tiles of 16
    argv = ["upscale", "--weights", str(run_dir), "--input", str(photo), "--output", str(tmp_path / "o")]
    argv += ["--tile", "16", "--overlap", "0", "--overwrite"]

    def progress_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "tiles done" in r.getMessage()]

    with caplog.at_level(logging.INFO):
        assert main(argv) == 0  # quick: no line before PROGRESS_EVERY_S has passed
        assert progress_lines() == []
        monkeypatch.setattr(upscale, "PROGRESS_EVERY_S", 0.0)
        assert main(argv) == 0
    assert progress_lines() == [f"p.png: {done}/9 tiles done" for done in range(1, 9)]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_folder_that_cannot_be_made_is_one_line(run_dir: Path, tmp_path: Path, capsys) -> None:
    photo = tmp_path / "p.png"
    Image.fromarray(make_photo((16, 16), 0)).save(photo)
    argv = ["upscale", "--weights", str(run_dir), "--input", str(photo), "--output", "/proc/x"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--output /proc/x: cannot create this folder" in err
    assert main([*argv[:-1], "/proc"]) == 2  # a folder that exists but takes no files
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--output: cannot write /proc/p.png" in err
