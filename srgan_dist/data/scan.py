"""Find, check and (where needed) convert HR images before any training starts.

``scan_images`` classifies every file of a source (a folder searched recursively, or a text file
with one path per line) as

- **usable**: 8-bit RGB JPEG / PNG / BMP that DALI and PIL decode as they are;
- **converted**: a real image the decoders could mis-read, rewritten once as 8-bit RGB PNG under
  ``cache_dir/converted/`` by these rules (``CONVERSION_RULES``):
  grayscale (``L``, ``1``) → R = G = B; palette (``P``) → its RGB(A) colours; alpha (``RGBA``,
  ``LA``, ``PA``) → composited over white; 16-bit (``I;16*``, ``I``, 48/64-bit PNG) → top 8 bits
  (value / 257, rounded); ``CMYK`` / ``YCbCr`` / ``LAB`` → PIL's RGB conversion; TIFF and WebP
  containers → PNG (DALI's TIFF/WebP support varies by build and sample type);
- **rejected**: zero-byte, not an image, an unsupported format, truncated or corrupt, smaller
  than ``min_side`` on a side, or more pixels than ``data.max_pixels``.

Formats are recognised by content (PIL's sniffing), not by extension; a folder scan passes over
hidden files and text sidecars (``SIDECAR_SUFFIXES``: manifests, READMEs). The default
``data.verify=header`` reads headers plus the file's last bytes (a PNG must end in ``IEND``, a
JPEG in ``EOI``), which catches truncation without decoding; ``full`` decodes every file.
Probe results are cached in ``cache_dir/scan_cache-<source hash>.json`` keyed by (path, size,
mtime), so a re-scan of an unchanged 100k-image folder costs one ``stat`` per file.

A source may also be a folder in object storage (``s3://bucket/prefix``, ``gs://...``; the URI
rules of ``srgan_dist.storage``). One listing gives every object's size and modification time;
a new or changed object is probed from its first ``HEAD_BYTES`` and last bytes (two ranged
reads; one whole read for a small object or ``verify=full``), so a re-scan with the cache costs
the listing alone. Files in ``ScanResult.files`` are then object URIs, which both loaders read.
Converted copies go where ``ConvertedCopies`` says (the driver keeps them next to a run in
object storage, so workers on any node read them).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from srgan_dist import atomic, storage
from srgan_dist.config import DataConfig
from srgan_dist.errors import UserError
from srgan_dist.pictures import load_rgb

log = logging.getLogger(__name__)

SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
"""Container formats accepted by content (``.jpg .jpeg .png .bmp .tif .tiff .webp``)."""
DIRECT_FORMATS = ("JPEG", "PNG", "BMP")
"""Formats DALI's decoders read directly (when the pixels are 8-bit RGB)."""
CONVERSION_RULES = {
    "grayscale": "gray replicated to R=G=B",
    "palette": "palette expanded to its RGB colours",
    "alpha": "alpha composited over white",
    "16-bit": "16-bit samples reduced to 8 bits (value/257, rounded)",
    "colour-space": "CMYK/YCbCr/LAB converted to RGB by PIL",
    "container": "TIFF/WebP rewritten as PNG",
}
CACHE_VERSION = 1
SIDECAR_SUFFIXES = (".json", ".jsonl", ".txt", ".md", ".csv", ".yaml", ".yml", ".log")
"""Text files a folder scan passes over (``prepare``'s manifest, READMEs, list files); every
other file, whatever its extension, is classified by content. Hidden files are passed over too."""


HEAD_BYTES = 256 * 1024
"""What a probe of an object reads first: enough for the headers (EXIF and ICC included) of
nearly every photo; an object whose header is longer is read whole."""
TAIL_BYTES = 64
Version = tuple[int, int]
"""(size in bytes, modification time in ns): what decides that a file or object changed."""


class ConvertedCopies:
    """Where the scan keeps converted copies: under its cache folder, read from there. (The
    driver's subclass uploads them next to a run kept in object storage.)"""

    def has(self, path: Path) -> bool:
        return path.is_file()

    def keep(self, path: Path) -> None:
        """``path`` was just written."""

    def location(self, path: Path) -> str:
        """Where the loaders read ``path``."""
        return str(path)


class DataError(UserError):
    """Bad input data a user has to fix; the message names each file (or config key) and why."""


@dataclass
class ScanResult:
    """Outcome of ``scan_images``: files ready for the loaders, and what was skipped or converted."""

    files: list[str] = field(default_factory=list)
    """Absolute paths the loaders decode as 8-bit RGB (converted copies under ``cache_dir``)."""
    sources: list[str] = field(default_factory=list)
    """The original path behind each entry of ``files`` (differs from it for converted files)."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` for every rejected file (only non-empty with ``on_bad_file=skip``)."""
    converted: list[tuple[str, str]] = field(default_factory=list)
    """``(original path, rule)`` for every file that was rewritten as 8-bit RGB PNG."""
    versions: dict[str, Version] = field(default_factory=dict)
    """(size, mtime) of each entry of ``sources``, as the scan found it."""


@dataclass
class _Probe:
    """What a file is, independent of the policy (min_side, max_pixels): the cached part."""

    width: int = 0
    height: int = 0
    format: str = ""
    mode: str = ""
    error: str = ""
    """Non-empty when the file cannot be used whatever the policy."""
    rule: str = ""
    """Key of ``CONVERSION_RULES`` when the file needs converting, else empty."""


def _listed(name: str) -> bool:
    """Whether a folder scan looks at a file of this name (hidden files and sidecars are passed over)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() not in SIDECAR_SUFFIXES


def list_objects(source: str, *, role: str) -> dict[str, Version]:
    """Every object under the folder URI ``source`` that a scan looks at, with its version.
    Raises ``DataError`` naming ``role`` and ``source`` when the URI is refused or nothing is there;
    ``StorageError`` (one line naming the URI) when the storage refuses the listing."""
    storage.check_uri(source, key=role)
    folder = source.partition("?")[0].rstrip("/") + "/"
    objects = {}
    for info in storage.list_files(source):
        *folders, name = info.uri.partition("?")[0].removeprefix(folder).split("/")
        if _listed(name) and not any(part.startswith(".") for part in folders):
            objects[info.uri] = (info.size, info.mtime_ns)
    if not objects:
        raise DataError(f"{role}: no objects under {source} (is the bucket and prefix right?)")
    return objects


def list_source(source: str, *, role: str) -> list[str]:
    """Absolute paths of every file in a folder (recursive, sorted) or named in a list file, or
    the URIs of every object under a folder URI."""
    if not source:
        raise DataError(f"{role}: no image source configured (set {role}=/abs/folder)")
    if storage.is_uri(source):
        return sorted(list_objects(source, role=role))
    path = Path(source).expanduser()
    if path.is_dir():
        found = []
        for root, dirs, names in os.walk(path.resolve()):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(os.path.join(root, n) for n in names if _listed(n))
        return sorted(found)  # absolute already: the walk starts at a resolved folder
    if path.is_file():
        if _sniff_is_image(path):
            raise DataError(f"{role}: {path} is an image; give a folder or a text file listing images")
        lines = [line.strip() for line in path.read_text().splitlines()]
        entries = [line for line in lines if line and not line.startswith("#")]
        return [str((path.parent / entry).expanduser().resolve()) for entry in entries]
    raise DataError(f"{role}: {source} is neither a folder nor a list file")


def _sniff_is_image(path: Path) -> bool:
    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError):
        return False


def _file_tail(path: str) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - TAIL_BYTES))
        return handle.read()


def _tail_complete(tail: bytes, image_format: str) -> bool:
    """Cheap truncation check: PNG ends with the IEND chunk, JPEG with the EOI marker."""
    tail = tail.rstrip(b"\0\n\r ")
    if image_format == "PNG":
        return tail.endswith(b"IEND\xae\x42\x60\x82")
    if image_format == "JPEG":
        return tail.endswith(b"\xff\xd9")
    return True


def _conversion_rule(image: Image.Image) -> str:
    mode = image.mode
    if mode in ("L", "1"):
        return "grayscale"
    if mode == "P":
        return "alpha" if "transparency" in image.info else "palette"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return "alpha"
    if mode.startswith("I") or mode == "F":
        return "16-bit"
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return "colour-space"
    if mode == "RGB":
        rawmodes = [tile[3][0] if isinstance(tile[3], tuple) else tile[3] for tile in image.tile]
        if any(isinstance(raw, str) and "16" in raw for raw in rawmodes):
            return "16-bit"  # 48-bit PNG: PIL shows 8-bit RGB, DALI would not
        if image.format not in DIRECT_FORMATS:
            return "container"
        return ""
    return "colour-space"


def _probe(path: str, verify: str) -> _Probe:
    """Classify one file by its content (headers, or a full decode with ``verify=full``)."""
    try:
        if os.path.getsize(path) == 0:
            return _Probe(error="zero-byte file")
    except OSError as error:
        return _Probe(error=f"cannot read: {error.strerror or error}")
    return _classify(path, verify, lambda: _file_tail(path))


def _probe_object(uri: str, size: int, verify: str) -> _Probe:
    """Classify one object from its head and tail (two ranged reads), or read whole when it is
    small, ``verify=full``, or its header runs past the first ``HEAD_BYTES``."""
    if size == 0:
        return _Probe(error="zero-byte file")
    try:
        if verify == "full" or size <= HEAD_BYTES:
            content = storage.read_bytes(uri)
            return _classify(io.BytesIO(content), verify, lambda: content[-TAIL_BYTES:])
        head = storage.read_range(uri, 0, HEAD_BYTES)
        probe = _classify(
            io.BytesIO(head), verify, lambda: storage.read_range(uri, size - TAIL_BYTES, TAIL_BYTES)
        )
        if not probe.error.startswith("corrupt"):
            return probe
        content = storage.read_bytes(uri)  # a header longer than HEAD_BYTES
        return _classify(io.BytesIO(content), verify, lambda: content[-TAIL_BYTES:])
    except storage.StorageError as error:
        return _Probe(error=f"cannot read: {error}")


def _classify(content: str | BinaryIO, verify: str, tail: Callable[[], bytes]) -> _Probe:
    """What the image in ``content`` is; ``tail`` gives its last bytes for the truncation check."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(content) as image:
                probe = _Probe(format=image.format or "", mode=image.mode)
                if probe.format not in SUPPORTED_FORMATS:
                    probe.error = (
                        f"unsupported image format {probe.format} (want {'/'.join(SUPPORTED_FORMATS)})"
                    )
                    return probe
                width, height = image.size
                # PNG's getexif() decodes the whole file: look only at EXIF met in the header
                has_exif = probe.format != "PNG" or "exif" in image.info
                if has_exif and image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated 90°
                    width, height = height, width
                probe.width, probe.height = width, height
                probe.rule = _conversion_rule(image)
                if verify == "full":
                    image.load()
                elif not _tail_complete(tail(), probe.format):
                    probe.error = "truncated (image data ends early)"
    except UnidentifiedImageError:
        return _Probe(error="not an image (unrecognised content)")
    except Image.DecompressionBombError as error:
        return _Probe(error=f"too large: {error}")
    except (OSError, SyntaxError, ValueError) as error:
        return _Probe(error=f"corrupt or truncated ({error})")
    return probe


def _converted_path(cache_dir: Path, path: str, version: Version) -> Path:
    key = hashlib.sha1(f"{path}|{version[0]}|{version[1]}".encode()).hexdigest()[:16]
    stem = Path(storage.name_of(path) if storage.is_uri(path) else path).stem
    return cache_dir / "converted" / key / f"{stem}.png"  # stem kept for names in logs


def _convert(path: str, target: Path) -> None:
    """Write ``path`` as 8-bit RGB PNG at ``target`` (atomically; kept across re-scans)."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(target) as partial:
        Image.fromarray(load_rgb(path)).save(partial, format="PNG", compress_level=1)


def _load_cache(cache_file: Path) -> dict[str, dict]:
    if not cache_file.is_file():
        return {}
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("scan cache %s is unreadable; re-scanning", cache_file)
        return {}
    return cached.get("entries", {}) if cached.get("version") == CACHE_VERSION else {}


def _save_cache(cache_file: Path, entries: dict[str, dict]) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(cache_file, json.dumps({"version": CACHE_VERSION, "entries": entries}))


def scan_images(
    source: str,
    *,
    role: str,
    min_side: int,
    data_cfg: DataConfig,
    cache_dir: Path,
    copies: ConvertedCopies | None = None,
) -> ScanResult:
    """Classify every file of ``source``; convert what needs it; apply ``data_cfg.on_bad_file``.

    ``role`` (``data.train`` / ``data.val``) prefixes messages; ``min_side`` is the smallest
    acceptable width and height; ``copies`` says where converted copies (written under
    ``cache_dir``) are kept and read. Raises ``DataError`` listing every bad file (policy
    ``error``) or when no usable file is left.
    """
    cache_dir = Path(cache_dir)
    if storage.is_uri(source):
        versions: dict[str, Version | None] = dict(list_objects(source, role=role))
        paths = sorted(versions)
    else:
        paths = list_source(source, role=role)
        versions = _stat_all(paths)
    probes = _probe_all(
        paths, versions, role=role, data_cfg=data_cfg, cache_file=cache_dir / cache_file_name(source)
    )
    result = ScanResult()
    bad: list[tuple[str, str]] = []
    for path in paths:
        reason = _rejection(probes[path], min_side, data_cfg.max_pixels)
        if not reason:
            reason = _take(result, path, probes[path], versions[path], cache_dir, copies or ConvertedCopies())
        if reason:
            bad.append((path, reason))
    _report(result, bad, source=source, role=role, data_cfg=data_cfg, cache_dir=cache_dir, found=len(paths))
    return result


def _stat_all(paths: list[str]) -> dict[str, Version | None]:
    """Each path's version (size and mtime key the cache), or None when it cannot be read."""
    versions: dict[str, Version | None] = {}
    for path in paths:
        try:
            stat = os.stat(path)
            versions[path] = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            versions[path] = None
    return versions


def cache_file_name(source: str) -> str:
    """The scan cache file of one source (a folder, list file or folder URI) inside the cache
    folder; one per source, pruned to its current files, so it never grows without bound."""
    name = source if storage.is_uri(source) else str(Path(source).expanduser().resolve())
    return f"scan_cache-{hashlib.sha1(name.encode()).hexdigest()[:12]}.json"


def _cache_key(path: str, version: Version | None, verify: str) -> str:
    return f"{path}|{version[0]}|{version[1]}|{verify}" if version else ""


def _probe_all(
    paths: list[str],
    versions: dict[str, Version | None],
    *,
    role: str,
    data_cfg: DataConfig,
    cache_file: Path,
) -> dict[str, _Probe]:
    """Every path's probe: from the cache when its size and mtime are unchanged, else probed
    now (in ``data_cfg.num_threads`` threads) and cached."""
    cache = _load_cache(cache_file)
    keys = {path: _cache_key(path, versions[path], data_cfg.verify) for path in paths}
    probes: dict[str, _Probe] = {}
    to_probe = []
    for path in paths:
        if versions[path] is None:
            probes[path] = _Probe(error="does not exist or cannot be read")
        elif keys[path] in cache:
            probes[path] = _Probe(**cache[keys[path]])
        else:
            to_probe.append(path)
    if not to_probe:
        return probes
    log.info(
        "%s: probing %d new or changed file(s) (%d cached)", role, len(to_probe), len(paths) - len(to_probe)
    )
    with ThreadPoolExecutor(max_workers=max(1, data_cfg.num_threads)) as pool:
        probed = pool.map(lambda p: _probe_one(p, versions[p], data_cfg.verify), to_probe)
        for path, probe in zip(to_probe, probed, strict=True):
            probes[path] = probe
            cache[keys[path]] = asdict(probe)
    current = set(keys.values())
    _save_cache(cache_file, {key: value for key, value in cache.items() if key in current})
    return probes


def _probe_one(path: str, version: Version | None, verify: str) -> _Probe:
    if storage.is_uri(path):
        assert version is not None, "a listed object has a version"
        return _probe_object(path, version[0], verify)
    return _probe(path, verify)


def _rejection(probe: _Probe, min_side: int, max_pixels: int) -> str:
    """Why the policy (``min_side``, ``data.max_pixels``) rejects a probed file; empty if it does not."""
    if probe.error:
        return probe.error
    if min(probe.width, probe.height) < min_side:
        return f"too small: {probe.width}x{probe.height}, need at least {min_side} px on each side"
    if probe.width * probe.height > max_pixels:
        return (
            f"too large: {probe.width}x{probe.height} = {probe.width * probe.height} pixels "
            f"> data.max_pixels={max_pixels}"
        )
    return ""


def _take(
    result: ScanResult,
    path: str,
    probe: _Probe,
    version: Version | None,
    cache_dir: Path,
    copies: ConvertedCopies,
) -> str:
    """Add an accepted file to ``result``, converted first if its probe says so; return why it
    was rejected after all (a decode failure met while converting), else an empty string."""
    assert version is not None, "a file that was probed has a version"
    file = path
    if probe.rule:
        target = _converted_path(cache_dir, path, version)
        if not copies.has(target):
            try:
                _convert(path, target)
            except storage.StorageError:
                raise  # the storage, not the file: one line naming the URI
            except (OSError, SyntaxError, ValueError) as error:
                return f"corrupt: cannot decode for conversion ({error})"
            copies.keep(target)
        file = copies.location(target)
        result.converted.append((path, CONVERSION_RULES[probe.rule]))
    result.files.append(file)
    result.sources.append(path)
    result.versions[path] = version
    return ""


def _report(
    result: ScanResult,
    bad: list[tuple[str, str]],
    *,
    source: str,
    role: str,
    data_cfg: DataConfig,
    cache_dir: Path,
    found: int,
) -> None:
    """Log conversions and the outcome; apply ``data.on_bad_file`` to ``bad`` (raise, or record
    them as skipped); raise when nothing usable is left."""
    if result.converted:
        log.info(
            "%s: converted %d file(s) to 8-bit RGB PNG under %s:\n%s",
            role,
            len(result.converted),
            cache_dir / "converted",
            "\n".join(f"  {p}: {rule}" for p, rule in result.converted),
        )
    listing = "\n".join(f"  {p}: {reason}" for p, reason in bad)
    if bad and data_cfg.on_bad_file == "error":
        raise DataError(
            f"{role}: {len(bad)} bad file(s) in {source} (fix or remove them, or set "
            f"data.on_bad_file=skip):\n{listing}"
        )
    if bad:
        log.warning("%s: skipping %d bad file(s) (data.on_bad_file=skip):\n%s", role, len(bad), listing)
        result.skipped = bad
    if not result.files:
        raise DataError(f"{role}: no usable images in {source} ({found} file(s) found, {len(bad)} bad)")
    log.info(
        "%s: %d usable image(s) (%d converted, %d skipped)",
        role,
        len(result.files),
        len(result.converted),
        len(bad),
    )
