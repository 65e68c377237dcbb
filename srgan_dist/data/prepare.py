"""``prepare``: cut large HR photos into overlapping sub-images; ``sample-data``: demo photos.

Why sub-images: decoding a 2K PNG to take one 96x96 crop throws away >99% of the work, and PNG
is decoded on the CPU even in DALI's "mixed" mode. BasicSR's recipe (480 px tiles every 240 px)
keeps every pixel of the source while each read costs ~1/12 of a full photo. JPEG (default,
quality 95, 4:4:4 chroma) is what nvJPEG decodes on the GPU and what DALI decodes by region of
interest; its artifacts at q95 are ~1.5 grey levels mean absolute difference (PSNR ~41 dB on the
benchmark photos), far below the error of an x4 SR model, but the model does learn them; pass
``--format png`` for lossless sub-images (CPU-decoded, several times slower; see BENCHMARKS.md).

Output: ``OUT/<relative/path/as__name>_sNNN.<ext>`` plus ``OUT/manifest.jsonl`` (one line per
finished source: its size/mtime and the tiles it produced) and ``OUT/prepare.json`` (the
parameters). A re-run skips sources already in the manifest, so an interrupted run resumes.

``SRC`` and ``OUT`` may be folders in object storage (``s3://``, ``gs://``). Tiles of a bucket
``OUT`` are cut into a local staging folder (this machine's cache), uploaded once their source
is finished, and removed locally; the manifest is uploaded every ``MANIFEST_UPLOAD_S`` seconds
and at the end, so an interrupted run redoes at most the sources of that interval.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from PIL import Image

from srgan_dist import storage
from srgan_dist.atomic import atomic_path, write_text
from srgan_dist.config import DataConfig
from srgan_dist.data.scan import DataError, scan_images
from srgan_dist.pictures import load_rgb

log = logging.getLogger(__name__)

TileFormat = Literal["jpeg", "png"]
_EXTENSIONS = {"jpeg": "jpg", "png": "png"}
MANIFEST_FILE = "manifest.jsonl"
PARAMS_FILE = "prepare.json"
MANIFEST_UPLOAD_S = 30.0


@dataclass
class PrepareReport:
    """What ``prepare_subimages`` did."""

    written_sources: int = 0
    resumed_sources: int = 0
    tiles: int = 0
    """Sub-images listed in the manifest after this run (all sources)."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    converted: list[tuple[str, str]] = field(default_factory=list)


def tile_origins(length: int, tile: int, step: int) -> list[int]:
    """Tile start offsets along one axis: every ``step`` px, plus one flush with the far edge."""
    if length <= tile:
        return [0]
    origins = list(range(0, length - tile + 1, step))
    if origins[-1] + tile < length:
        origins.append(length - tile)
    return origins


def _tile_stem(source: str, root: str) -> str:
    """``a/b/photo.png`` under ``root`` → ``a__b__photo`` (a file path or an object URI)."""
    if storage.is_uri(source):
        bare_root = root.partition("?")[0].rstrip("/") + "/"
        relative = Path(unquote(source.partition("?")[0].removeprefix(bare_root)))
    else:
        try:
            relative = Path(source).resolve().relative_to(root)
        except ValueError:  # list-file entries may live outside the list's folder
            relative = Path(Path(source).name)
    return "__".join(relative.with_suffix("").parts)


def _cut_one(job: tuple[str, str, str, str, int, int, str, int]) -> list[str]:
    """Write the tiles of one image; return their file names (runs in a worker process)."""
    decoded_path, source, root, out, tile, step, fmt, quality = job
    image = load_rgb(decoded_path)
    height, width = image.shape[:2]
    stem = _tile_stem(source, root)
    names = []
    index = 0
    for top in tile_origins(height, tile, step):
        for left in tile_origins(width, tile, step):
            index += 1
            name = f"{stem}_s{index:03d}.{_EXTENSIONS[fmt]}"
            crop = Image.fromarray(image[top : top + tile, left : left + tile])
            with atomic_path(Path(out) / name) as partial:
                if fmt == "jpeg":
                    crop.save(partial, format="JPEG", quality=quality, subsampling=0)
                else:
                    crop.save(partial, format="PNG", compress_level=1)
            names.append(name)
    return names


def _read_manifest(path: Path) -> dict[str, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                done[entry["source"]] = entry
    return done


class _Output:
    """Where tiles go: the folder ``OUT``, or a bucket's folder through a local staging copy."""

    def __init__(self, out: str | Path):
        self.uri = str(out) if storage.is_uri(out) else None
        if self.uri is not None:
            storage.check_uri(self.uri, key="prepare OUT")
            self.folder = storage.working_copy(self.uri, kind="prepare")
        else:
            self.folder = Path(out).resolve()
            for path in (self.folder, *self.folder.parents):
                if path.exists() and not path.is_dir():
                    raise DataError(
                        f"prepare: OUT {path} is a file, not a folder; choose another output folder"
                    )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.existing: set[str] | None = None

    def pull(self, name: str) -> Path:
        """The local copy of ``name`` (fetched from the bucket first)."""
        path = self.folder / name
        if self.uri is not None and not storage.download(storage.join(self.uri, name), path):
            path.unlink(missing_ok=True)
        return path

    def push(self, name: str) -> None:
        if self.uri is not None:
            storage.upload(self.folder / name, storage.join(self.uri, name))

    def has(self, name: str) -> bool:
        if self.uri is None:
            return (self.folder / name).is_file()
        if self.existing is None:  # one listing for the whole resume check
            self.existing = {unquote(storage.name_of(info.uri)) for info in storage.list_files(self.uri)}
        return name in self.existing

    def store_tiles(self, names: list[str]) -> None:
        """Upload a finished source's tiles and drop their local copies (a bucket ``OUT``)."""
        if self.uri is None:
            return
        for name in names:
            self.push(name)
            (self.folder / name).unlink()


def prepare_subimages(
    source: str,
    out: str | Path,
    *,
    tile: int = 480,
    step: int = 240,
    fmt: TileFormat = "jpeg",
    quality: int = 95,
    workers: int = 2,
    min_side: int = 96,
    data_cfg: DataConfig | None = None,
    progress: bool = True,
) -> PrepareReport:
    """Scan ``source`` (policy from ``data_cfg``), then cut every usable image into ``out``."""
    if not 0 < step <= tile:
        raise DataError(f"prepare: need 0 < step <= tile, got step={step}, tile={tile}")
    if not 1 <= quality <= 100:
        raise DataError(f"prepare: JPEG quality must be in 1..100, got {quality}")
    data_cfg = data_cfg or DataConfig(on_bad_file="skip")
    output = _Output(out)
    params = {"tile": tile, "step": step, "format": fmt, "quality": quality if fmt == "jpeg" else None}
    params_file = output.pull(PARAMS_FILE)
    if params_file.is_file() and json.loads(params_file.read_text()) != params:
        raise DataError(
            f"prepare: {out} was prepared with {params_file.read_text().strip()}, now {params}; "
            "use a new output folder"
        )
    write_text(params_file, json.dumps(params) + "\n")
    output.push(PARAMS_FILE)

    scan = scan_images(
        source, role="prepare", min_side=min_side, data_cfg=data_cfg, cache_dir=output.folder / ".scan_cache"
    )
    report = PrepareReport(skipped=scan.skipped, converted=scan.converted)
    manifest_file = output.pull(MANIFEST_FILE)
    done = _read_manifest(manifest_file)
    if storage.is_uri(source):
        root = source
    else:
        root = str(Path(source).resolve() if Path(source).is_dir() else Path(source).resolve().parent)
    jobs = []
    for decoded, original in zip(scan.files, scan.sources, strict=True):
        size, mtime_ns = scan.versions[original]
        entry = done.get(original)
        if (
            entry
            and entry["size"] == size
            and entry["mtime_ns"] == mtime_ns
            and all(output.has(name) for name in entry["tiles"])
        ):
            report.resumed_sources += 1
            continue
        jobs.append((decoded, original, root, str(output.folder), tile, step, fmt, quality))

    from tqdm import tqdm

    uploaded_at = time.monotonic()
    with (
        ProcessPoolExecutor(max_workers=max(1, workers)) as pool,
        open(manifest_file, "a") as manifest,
        tqdm(total=len(jobs), desc="prepare", unit="img", disable=not progress) as bar,
    ):
        try:
            for job, names in zip(jobs, pool.map(_cut_one, jobs), strict=True):
                original = job[1]
                output.store_tiles(names)
                size, mtime_ns = scan.versions[original]
                entry = {"source": original, "size": size, "mtime_ns": mtime_ns, "tiles": names}
                manifest.write(json.dumps(entry) + "\n")
                manifest.flush()
                done[original] = entry
                report.written_sources += 1
                bar.update(1)
                if output.uri is not None and time.monotonic() - uploaded_at > MANIFEST_UPLOAD_S:
                    output.push(MANIFEST_FILE)
                    uploaded_at = time.monotonic()
        finally:
            manifest.flush()
            if report.written_sources:
                output.push(MANIFEST_FILE)
    report.tiles = sum(len(done[s]["tiles"]) for s in scan.sources if s in done)
    return report


# ---------------------------------------------------------------------------------------------
# sample-data: real photographs shipped inside scikit-image's wheel (no network needed).

SAMPLE_TRAIN = (
    "astronaut.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
)
SAMPLE_VAL = ("chelsea.png", "ihc.png", "camera.png")
"""Disjoint photos (no stereo pairs split across them); every one is >= 300 px on each side."""


def write_sample_data(out: str | Path) -> dict[str, list[Path]]:
    """Write the sample photos as RGB PNG into ``out/train`` and ``out/val``; skip existing files."""
    try:
        import skimage
    except ImportError as error:
        raise DataError("sample-data needs scikit-image: pip install 'srgan-dist[demo]'") from error
    shipped = Path(skimage.__file__).parent / "data"
    out = Path(out)
    written: dict[str, list[Path]] = {"train": [], "val": []}
    for split, names in (("train", SAMPLE_TRAIN), ("val", SAMPLE_VAL)):
        (out / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            source = shipped / name
            if not source.is_file():
                raise DataError(f"sample-data: {source} is not in the installed scikit-image")
            target = out / split / f"{Path(name).stem}.png"
            if not target.is_file():
                with atomic_path(target) as partial:
                    Image.fromarray(load_rgb(source)).save(partial, format="PNG")
            written[split].append(target)
    return written
