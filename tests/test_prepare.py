"""``prepare`` (sub-images, manifest, resume, bad files) and ``sample-data``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srgan_dist.cli import main
from srgan_dist.config import DataConfig
from srgan_dist.data import DataError, scan_images
from srgan_dist.data.prepare import prepare_subimages, tile_origins, write_sample_data


def test_tile_origins_cover_the_image_like_basicsr():
    assert tile_origins(100, 48, 24) == [0, 24, 48, 52]
    assert tile_origins(96, 48, 24) == [0, 24, 48]
    assert tile_origins(40, 48, 24) == [0]  # smaller than a tile: kept whole


@pytest.fixture
def hr_folder(tmp_path) -> Path:
    root = tmp_path / "hr"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)).save(root / "wide.png")
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(root / "sub" / "gray.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def prepare(src, out, **kwargs):
    kwargs.setdefault("data_cfg", DataConfig(on_bad_file="skip", num_threads=1))
    return prepare_subimages(
        str(src), out, tile=48, step=24, workers=1, min_side=32, progress=False, **kwargs
    )


def test_prepare_writes_tiles_manifest_and_resumes(hr_folder, tmp_path):
    out = tmp_path / "sub"
    report = prepare(hr_folder, out)
    assert report.written_sources == 2 and report.resumed_sources == 0
    assert [Path(p).name for p, _ in report.skipped] == ["broken.png"]
    assert [Path(p).name for p, _ in report.converted] == ["gray.png"]
    tiles = sorted(p.name for p in out.glob("*.jpg"))
    # wide.png 100x70: x origins 0,24,48,52 and y origins 0,22 → 8 tiles; gray.png: 1 tile
    assert len(tiles) == 9 and report.tiles == 9
    assert "sub__gray_s001.jpg" in tiles and "wide_s008.jpg" in tiles
    with Image.open(out / "wide_s008.jpg") as tile:
        assert tile.size == (48, 48) and tile.mode == "RGB"
    original = np.asarray(Image.open(hr_folder / "wide.png"), dtype=float)
    last = np.asarray(Image.open(out / "wide_s008.jpg"), dtype=float)
    assert np.abs(last - original[22:70, 52:100]).mean() < 8  # bottom-right tile, JPEG q95 of noise
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(len(entry["tiles"]) for entry in manifest) == [1, 8]

    again = prepare(hr_folder, out)
    assert again.written_sources == 0 and again.resumed_sources == 2 and again.tiles == 9

    # an interrupted run: the last image never reached the manifest
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text(lines[0] + "\n")
    resumed = prepare(hr_folder, out)
    assert resumed.written_sources == 1 and resumed.resumed_sources == 1 and resumed.tiles == 9

    # the output folder is a training source as it is (manifest and cache are passed over)
    scanned = scan_images(
        str(out), role="data.train", min_side=48, data_cfg=DataConfig(), cache_dir=tmp_path / "c"
    )
    assert len(scanned.files) == 9 and not scanned.skipped

    with pytest.raises(DataError, match="was prepared with"):
        prepare(hr_folder, out, fmt="png")


def test_prepare_error_policy_and_cli_output(hr_folder, tmp_path, capsys):
    with pytest.raises(DataError, match=r"broken\.png: "):
        prepare(hr_folder, tmp_path / "a", data_cfg=DataConfig(on_bad_file="error", num_threads=1))
    code = main(["prepare", str(hr_folder), str(tmp_path / "b"), "--tile", "48", "--step", "24",
                 "--min-side", "32", "--workers", "1", "--format", "png", "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert f"skipped {hr_folder / 'broken.png'}: " in printed
    assert "9 sub-images" in printed and len(list((tmp_path / "b").glob("*.png"))) == 9


def test_sample_data_is_disjoint_real_photos_and_idempotent(tmp_path, capsys):
    pytest.importorskip("skimage")
    written = write_sample_data(tmp_path)
    train = {p.name for p in written["train"]}
    val = {p.name for p in written["val"]}
    assert len(val) >= 2 and len(train) >= 4 and not train & val
    for path in written["train"] + written["val"]:
        with Image.open(path) as image:
            assert image.mode == "RGB" and min(image.size) >= 64
    stamp = written["val"][0].stat().st_mtime_ns
    assert main(["sample-data", "--out", str(tmp_path)]) == 0
    assert written["val"][0].stat().st_mtime_ns == stamp  # kept, not rewritten
    assert "val: 3 photo(s)" in capsys.readouterr().out
