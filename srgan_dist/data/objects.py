"""How a worker's loader reads training images that live in object storage (``s3://``, ``gs://``).

``data.train`` may name a folder in a bucket; the scan then hands the loaders object URIs
(``?endpoint_override=`` and the other query parameters of the data URI kept). Each loader reads
them without a shared filesystem:

- **PIL loader**: ``pictures.load_rgb`` reads the object whole through pyarrow.
- **DALI loader, s3://**: DALI's own S3 client (``fn.io.file.read`` on ``s3://bucket/key``)
  fetches the bytes straight into its decoder. It takes its endpoint and credentials from the
  environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` ...), so :func:`dali_s3_environment`
  turns an endpoint named in the URI into ``AWS_ENDPOINT_URL`` for the worker process.
- **DALI loader, gs://**: DALI 2.4 ships a GCS client too, but it did not reach a GCS emulator
  (fake-gcs-server, ``CLOUD_STORAGE_EMULATOR_ENDPOINT``) when tried, so ``gs://`` objects are read
  through pyarrow (the same client as ``run.storage``) in ``data.num_threads`` threads and fed
  to DALI as encoded bytes.
- **``data.cache_dir``** (any loader, any scheme): each object is downloaded once into that
  node-local folder (atomically, so ranks and loader processes sharing a node never read a
  half-written file) and read from local disk from then on.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from srgan_dist import storage
from srgan_dist.data.scan import DataError


class ObjectCache:
    """A node-local copy of each object read (``data.cache_dir``); local paths pass through."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def local(self, location: str) -> str:
        """A local path holding ``location``'s bytes: the object's cached copy (downloaded on
        first use), or ``location`` itself when it is a local path."""
        if not storage.is_uri(location):
            return location
        bare = location.partition("?")[0]
        key = hashlib.sha256(bare.encode()).hexdigest()
        suffix = os.path.splitext(storage.name_of(location))[1][:8]
        path = self.folder / key[:2] / f"{key}{suffix}"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            if not storage.download(location, path):
                raise storage.StorageError(f"reading {location} failed: the object is gone")
        return str(path)


def dali_s3_environment(files: list[str]) -> dict[str, str]:
    """The environment DALI's S3 client needs for ``files``: ``AWS_ENDPOINT_URL`` (and
    ``AWS_REGION``) from an ``endpoint_override`` (``region``) in their URIs. Raises ``DataError``
    when the environment already names another endpoint (DALI would read from that one)."""
    needed: dict[str, str] = {}
    for query_text in {urlsplit(file).query for file in files if file.startswith("s3://")}:
        query = dict(parse_qsl(query_text))
        if "endpoint_override" in query:
            endpoint = query["endpoint_override"]
            needed["AWS_ENDPOINT_URL"] = (
                endpoint if "://" in endpoint else f"{query.get('scheme', 'https')}://{endpoint}"
            )
        if "region" in query:
            needed["AWS_REGION"] = query["region"]
    for name, value in needed.items():
        if os.environ.get(name, value) != value:
            raise DataError(
                f"data.train: the data URI names {name}={value}, but the environment has "
                f"{name}={os.environ[name]}; DALI reads s3:// through the environment: unset it or "
                "drop endpoint_override/region from the URI"
            )
    return needed


class DaliFiles:
    """What DALI's ``external_source`` gets for each batch of files: the paths for
    ``fn.io.file.read`` (``reads_files``), or the encoded bytes read here."""

    def __init__(self, files: list[str], *, cache_dir: str, num_threads: int):
        self.cache = ObjectCache(cache_dir) if cache_dir else None
        uris = [file for file in files if storage.is_uri(file)]
        self.reads_files = self.cache is not None or not any(uri.startswith("gs://") for uri in uris)
        self.pool = ThreadPoolExecutor(max_workers=max(1, num_threads)) if uris else None
        if self.reads_files and self.cache is None and uris:
            os.environ.update(dali_s3_environment(uris))

    def batch(self, files: list[str]) -> list[np.ndarray]:
        """One batch as the pipeline's input: uint8 arrays of paths or of encoded bytes."""
        if self.cache is not None:
            files = list(self.pool.map(self.cache.local, files)) if self.pool else files
            return _as_arrays(file.encode() for file in files)
        if self.reads_files:
            return _as_arrays(file.partition("?")[0].encode() for file in files)
        return _as_arrays(self.pool.map(_read, files))


def _read(location: str) -> bytes:
    if storage.is_uri(location):
        return storage.read_bytes(location)
    with open(location, "rb") as handle:
        return handle.read()


def _as_arrays(items) -> list[np.ndarray]:
    return [np.frombuffer(item, dtype=np.uint8) for item in items]
