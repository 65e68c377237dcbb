"""Cloud storage for run directories: ``s3://`` and ``gs://`` URIs, through ``pyarrow.fs``.

A run whose ``run.storage`` is a URI keeps a local *working copy* of its run directory
(``~/.cache/srgan-dist/runs/<scheme>/<bucket>/<path>/<name>``, see :func:`working_copy`): the
code that writes ``config.yaml``, ``summary.json``, generators and TensorBoard events writes
there as for a local run, and :class:`srgan_dist.rundir.RunDir` uploads each file once written.
Ray Train writes checkpoints to the URI itself (``RunConfig(storage_path=<uri>)``); readers list
and download from the URI. This module is the only one that talks to the storage.

URIs follow pyarrow's (and Ray's) syntax, query parameters included, e.g.
``s3://runs/srgan?endpoint_override=127.0.0.1:9000&scheme=http`` for an S3-compatible server.
Credentials come from the environment the usual way (``AWS_ACCESS_KEY_ID`` / ``AWS_PROFILE`` /
instance profiles, ``AWS_ENDPOINT_URL``; GCP application default credentials); a URI that
carries credentials is refused, because the URI is written into config.yaml, summary.json and
logs. Every storage failure is a :class:`StorageError` naming the operation and the URI.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from srgan_dist import atomic
from srgan_dist.errors import UserError

SCHEMES = ("s3", "gs")
# The query parameters pyarrow 26's S3 and GCS ``from_uri`` accept without credentials; any other
# parameter is refused by name (its value is never echoed: it may be a secret).
QUERY_PARAMETERS = {
    "s3": (
        "region", "scheme", "endpoint_override", "allow_bucket_creation", "allow_bucket_deletion",
        "tls_ca_file_path", "tls_verify_certificates", "allow_delayed_open", "smart_defaults",
    ),
    "gs": ("scheme", "endpoint_override", "project_id", "retry_limit_seconds"),
}  # fmt: skip
# What marks a name (a URI's query parameter, a job's environment variable) as a credential: one
# of these words between underscores, or one of these fragments anywhere. TOKENIZERS_PARALLELISM
# is no credential, HF_TOKEN and session_token are.
CREDENTIAL_WORDS = {"TOKEN", "CREDENTIAL", "CREDENTIALS"}
CREDENTIAL_FRAGMENTS = ("SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "ACCESS_KEY", "API_KEY", "PRIVATE_KEY")
CREDENTIALS_FROM_ENV = (
    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS"
)
WRITE_CHECK_FILE = ".srgan-dist-write-check"
COPY_CHUNK_BYTES = 64 * 2**20  # Ray Train's for checkpoints; each read of an S3 file is one request
# What to check, for the errors a user meets first (pyarrow's AWS error names).
CREDENTIALS_HINT = (
    "check the credentials in the environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
)
HINTS = (
    ("ACCESS_DENIED", CREDENTIALS_HINT),
    ("INVALID_ACCESS_KEY_ID", CREDENTIALS_HINT),
    ("SIGNATURE_DOES_NOT_MATCH", CREDENTIALS_HINT),
    ("NETWORK_CONNECTION", "is the storage endpoint up? AWS_ENDPOINT_URL or ?endpoint_override= names it"),
)


class StorageError(OSError):
    """Reading or writing cloud storage failed; the message names the operation and the URI."""


class UnsafeObjectKey(StorageError):
    """An object whose key would be written outside the local folder it is downloaded into."""


def is_uri(location: str | Path) -> bool:
    """True for ``scheme://...`` (cloud storage, a job server URL), False for a filesystem path."""
    return "://" in str(location)


def check_uri(uri: str, key: str = "run.storage") -> None:
    """Raise ``UserError`` naming ``key`` unless ``uri`` is an ``s3://`` / ``gs://`` URI that is
    safe to write into files and build local paths from: no credentials (user-info or query
    parameters), only the query parameters pyarrow documents for the scheme, and no ``.`` / ``..``
    path segment (also percent-encoded), which would leave the bucket prefix or the local working
    copy. Credential checks come first and no message echoes a URI that fails them."""
    parts = urlsplit(uri)
    if "@" in parts.netloc and parts.netloc.partition("@")[0] != "anonymous":
        raise UserError(
            f"{key}: the URI carries credentials before '@'; it is written into config.yaml, logs and "
            f"folder names, so give credentials through the environment instead ({CREDENTIALS_FROM_ENV})"
        )
    names = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True)]
    secrets = sorted({name for name in names if names_a_credential(name)})
    if secrets:
        raise UserError(
            f"{key}: the URI carries credentials ({', '.join(secrets)}); it is written into config.yaml "
            f"and logs, so give credentials through the environment instead ({CREDENTIALS_FROM_ENV})"
        )
    if parts.scheme not in SCHEMES:
        raise UserError(
            f"{key}: {uri!r} is a {parts.scheme}:// URI; storage takes a local or shared path, "
            "or an s3:// or gs:// URI"
        )
    unknown = sorted(set(names) - set(QUERY_PARAMETERS[parts.scheme]))
    if unknown:
        raise UserError(
            f"{key}: unknown query parameter(s) {', '.join(unknown)} in the {parts.scheme}:// URI "
            f"(known: {', '.join(QUERY_PARAMETERS[parts.scheme])})"
        )
    bucket = parts.netloc.rpartition("@")[2]
    if not bucket:
        raise UserError(f"{key}: {uri!r} names no bucket; e.g. s3://my-bucket/runs")
    if any(segment in (".", "..") for segment in _decoded(f"{bucket}/{parts.path}").split("/")):
        raise UserError(
            f"{key}: {uri!r} has a '.' or '..' path segment; name the folder directly "
            "(such a URI can point outside the bucket prefix it seems to name)"
        )


def names_a_credential(name: str) -> bool:
    """Whether ``name`` (a query parameter, an environment variable) holds a credential. Names of
    where credentials are kept (``*_FILE``, ``*_PATH``, ``*_DIR``, GOOGLE_APPLICATION_CREDENTIALS)
    do not."""
    upper = name.upper()
    if upper.endswith(("_FILE", "_PATH", "_DIR")) or upper == "GOOGLE_APPLICATION_CREDENTIALS":
        return False
    return bool(set(upper.split("_")) & CREDENTIAL_WORDS) or any(
        part in upper for part in CREDENTIAL_FRAGMENTS
    )


def _decoded(text: str) -> str:
    """``text`` percent-decoded until nothing changes (``%252e`` is ``.`` after two rounds)."""
    while (decoded := unquote(text)) != text:
        text = decoded
    return text


def check_key(key: str, folder: str) -> str:
    """The relative path an object ``key`` found under ``folder`` maps to locally; raises
    ``UnsafeObjectKey`` when it would leave the folder (``..``, ``.``, an empty segment or a
    leading ``/``). Keys come from whoever can write to the bucket."""
    prefix = folder.rstrip("/") + "/"
    relative = key[len(prefix) :] if key.startswith(prefix) else None
    segments = relative.split("/") if relative else []
    if relative is None or not segments or any(part in ("", ".", "..") or "\\" in part for part in segments):
        raise UnsafeObjectKey(
            f"object {key!r} under {folder!r} has a key that would be written outside the folder it "
            "belongs to; it was not downloaded (srgan-dist never writes such keys: whoever can write "
            "to the bucket put it there)"
        )
    return relative


def join(uri: str, *parts: str) -> str:
    """``join("s3://b/runs?scheme=http", "demo")`` → ``s3://b/runs/demo?scheme=http``."""
    base, sep, query = uri.partition("?")
    path = "/".join([base.rstrip("/"), *(part.strip("/") for part in parts if part)])
    return path + sep + query


def parent(uri: str) -> str:
    """``parent("s3://b/runs/demo?scheme=http")`` → ``s3://b/runs?scheme=http``."""
    base, sep, query = uri.partition("?")
    return base.rstrip("/").rpartition("/")[0] + sep + query


def name_of(uri: str) -> str:
    """The last path component of ``uri`` (query left out)."""
    return uri.partition("?")[0].rstrip("/").rpartition("/")[2]


def working_copy(uri: str, kind: str = "runs") -> Path:
    """The local folder that mirrors ``uri`` on this machine, in its cache of ``kind``
    (:func:`cache_folder`): ``runs`` for run directories, ``tensorboard`` for the copies
    ``srgan-dist tensorboard`` keeps in step with a bucket, ``prepare`` for ``prepare``'s staging."""
    check_uri(uri)  # no credentials in the folder's name, no '..' out of the cache
    parts = urlsplit(uri)
    bucket = parts.netloc.rpartition("@")[2]
    return cache_folder(kind) / parts.scheme / bucket / parts.path.strip("/")


def cache_folder(kind: str) -> Path:
    """This machine's cache of ``kind`` (``runs``, ``vgg``): under ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "srgan-dist" / kind


def cached_copy(uri: str, kind: str) -> Path:
    """A local copy of the file at ``uri`` in this machine's cache of ``kind``, downloaded once
    per version of the object (its size and modification time name the copy)."""
    info = file_info(uri)
    if info is None:
        raise StorageError(f"reading {uri} failed: no such object")
    bare = uri.partition("?")[0]
    key = hashlib.sha256(f"{bare}|{info.size}|{info.mtime_ns}".encode()).hexdigest()[:16]
    path = cache_folder(kind) / f"{key}-{name_of(uri)}"
    if not path.is_file() and not download(uri, path):
        raise StorageError(f"reading {uri} failed: no such object")
    return path


@contextlib.contextmanager
def _operation(what: str, uri: str) -> Iterator[None]:
    """Turn pyarrow's errors (``OSError``, ``ArrowInvalid``) into one ``StorageError`` line."""
    import pyarrow

    try:
        yield
    except (OSError, pyarrow.ArrowException) as error:
        if isinstance(error, StorageError):
            raise
        detail = " ".join(str(error).split())
        hints = [hint for marker, hint in HINTS if marker in detail]
        raise StorageError(
            f"{what} {uri} failed: {detail}" + "".join(f" ({hint})" for hint in hints[:1])
        ) from error


# What a filesystem object takes from the environment when it is made: a cached one is reused
# only while these are unchanged (their values are hashed, never kept or shown).
FILESYSTEM_ENVIRONMENT = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
    "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST",
)  # fmt: skip


@dataclass(frozen=True)
class ObjectInfo:
    """One object found by :func:`list_files`: its URI (the listed URI's query kept), size and
    modification time (what decides whether it changed)."""

    uri: str
    size: int
    mtime_ns: int


def open_uri(uri: str):  # -> tuple[pyarrow.fs.FileSystem, str]
    """The pyarrow filesystem and the path on it that ``uri`` names.

    Filesystems are made once per process, bucket, query and credentials environment: making an
    S3 one costs ~2 ms, which a scan of 100,000 objects would pay per object. (Per process: a
    client made before a fork, e.g. by a DataLoader worker's parent, stalls in the child; GCS's
    waited ~0.5 s per read there.)"""
    check_uri(uri)
    parts = urlsplit(uri)
    environment = hashlib.sha256(
        "\0".join(os.environ.get(name, "") for name in FILESYSTEM_ENVIRONMENT).encode()
    ).hexdigest()
    with _operation("opening", uri):
        filesystem = _filesystem(
            f"{parts.scheme}://{parts.netloc}" + (f"?{parts.query}" * bool(parts.query)),
            environment,
            os.getpid(),
        )
    bucket = parts.netloc.rpartition("@")[2]
    return filesystem, f"{bucket}/{unquote(parts.path).strip('/')}".rstrip("/")


@functools.lru_cache(maxsize=16)
def _filesystem(bucket_uri: str, environment: str, pid: int):  # -> pyarrow.fs.FileSystem
    """The filesystem of one bucket URI (``environment`` and ``pid`` only key the cache)."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(bucket_uri)[0]


def _info(uri: str):  # -> pyarrow.fs.FileInfo
    fs, path = open_uri(uri)
    with _operation("looking up", uri):
        return fs.get_file_info(path)


def exists(uri: str) -> bool:
    import pyarrow.fs

    return _info(uri).type != pyarrow.fs.FileType.NotFound


def file_info(uri: str):  # -> pyarrow.fs.FileInfo | None
    """The file at ``uri`` (size, mtime), or None when there is none."""
    import pyarrow.fs

    info = _info(uri)
    return info if info.type == pyarrow.fs.FileType.File else None


def read_bytes(uri: str) -> bytes:
    fs, path = open_uri(uri)
    with _operation("reading", uri), fs.open_input_stream(path) as stream:
        return stream.read()


def read_range(uri: str, offset: int, length: int) -> bytes:
    """``length`` bytes of the object at ``uri`` from ``offset`` (one ranged GET)."""
    fs, path = open_uri(uri)
    with _operation("reading", uri), fs.open_input_file(path) as handle:
        return handle.read_at(length, offset)


def list_files(uri: str) -> list[ObjectInfo]:
    """Every object under the folder ``uri`` (recursive, sorted by URI; [] when there is none).
    Each key is checked (:func:`check_key`): a URI built from it names an object in the folder."""
    import pyarrow.fs

    fs, path = open_uri(uri)
    with _operation("listing", uri):
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True))
    found = [
        ObjectInfo(join(uri, quote(check_key(info.path, path))), info.size, info.mtime_ns or 0)
        for info in infos
        if info.type == pyarrow.fs.FileType.File
    ]
    return sorted(found, key=lambda info: info.uri)


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = open_uri(uri)
    with _operation("writing", uri), fs.open_output_stream(path) as stream:
        stream.write(data)


def list_folders(location: str | Path) -> list[str]:
    """Names of the sub-folders of a local folder or URI ([] when it does not exist)."""
    import pyarrow.fs

    if not is_uri(location):
        path = Path(location)
        return [child.name for child in path.iterdir() if child.is_dir()] if path.is_dir() else []
    uri = str(location)
    fs, path = open_uri(uri)
    with _operation("listing", uri):
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return [info.base_name for info in infos if info.type == pyarrow.fs.FileType.Directory]


def upload(local: Path, uri: str) -> None:
    """Copy a local file, or a folder with everything in it, to ``uri`` (replacing what is there)."""
    import pyarrow.fs

    fs, path = open_uri(uri)
    with _operation(f"uploading {local} to", uri):
        # As Ray Train copies checkpoints: threaded uploads to S3 are unsafe in pyarrow
        # (apache/arrow#32372), and each read is one ranged GET, so read in large chunks.
        pyarrow.fs.copy_files(
            str(local), path, pyarrow.fs.LocalFileSystem(), fs, chunk_size=COPY_CHUNK_BYTES, use_threads=False
        )


def download(uri: str, local: Path) -> bool:
    """Copy the file or folder at ``uri`` to ``local``; False (nothing copied) when it does not exist.

    Each file arrives under a temporary name and is renamed, so it is never half-written. A folder's
    object keys are all checked (:func:`check_key`) before anything is written: one that would
    land outside ``local`` raises ``UnsafeObjectKey`` naming it.
    """
    import pyarrow.fs

    info = _info(uri)
    if info.type == pyarrow.fs.FileType.NotFound:
        return False
    fs, path = open_uri(uri)
    if info.type == pyarrow.fs.FileType.Directory:
        with _operation("listing", uri):
            infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
        files = [
            (info.path, check_key(info.path, path)) for info in infos if info.type == pyarrow.fs.FileType.File
        ]
    else:
        files = [(path, "")]
    local = Path(local)
    for key, relative in files:
        target = local / relative if relative else local
        target.parent.mkdir(parents=True, exist_ok=True)
        with _operation(f"downloading to {target} from", uri), atomic.atomic_path(target) as partial:
            pyarrow.fs.copy_files(
                key,
                str(partial),
                fs,
                pyarrow.fs.LocalFileSystem(),
                chunk_size=COPY_CHUNK_BYTES,
                use_threads=False,
            )
    if not files:
        local.mkdir(parents=True, exist_ok=True)
    return True


INCOMING_DIR = ".incoming"
"""Where :func:`follow_folder` downloads a new file before renaming it into place: outside every
sub-folder, under a name without ``tfevents``, so a TensorBoard reading the copy never sees half
a file."""


def follow_folder(uri: str, local: Path, held: dict[str, int]) -> int:
    """Bring ``local`` up to date with the folder at ``uri``, whose files only ever grow
    (TensorBoard event files); return the bytes read.

    ``held`` maps each file's path under ``local`` to the bytes this copy holds of it; the caller
    keeps it between calls (a file not in it is taken from ``local`` as an earlier call left it).
    A file the copy holds whole costs nothing but its line in the listing; a file that grew gets
    only its new bytes (ranged reads) appended; a new file, or one that got shorter (replaced), is
    downloaded whole into :data:`INCOMING_DIR` and renamed into place. Every key is checked
    (:func:`check_key`) before anything is written, and an append never follows a symlink.
    """
    import pyarrow.fs

    fs, path = open_uri(uri)
    with _operation("listing", uri):
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True))
    files = sorted(
        (check_key(info.path, path), info.path, info.size)
        for info in infos
        if info.type == pyarrow.fs.FileType.File
    )
    local = Path(local)
    fetched = 0
    for relative, key, size in files:
        target = local / relative
        have = held[relative] if relative in held else _regular_file_size(target)
        if have == size:
            held[relative] = size
            continue
        with _operation(f"downloading to {target} from", join(uri, relative)):
            if have is not None and have < size and _append_range(fs, key, target, have, size):
                fetched += size - have
            else:
                _download_new(fs, key, target, local / INCOMING_DIR)
                fetched += size
        held[relative] = size
    return fetched


def _regular_file_size(path: Path) -> int | None:
    """The size of the regular file at ``path`` (not following a symlink), else None."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _append_range(fs, key: str, target: Path, start: int, end: int) -> bool:
    """Append bytes ``[start, end)`` of object ``key`` to ``target``; False (nothing written)
    unless ``target`` is a regular file, not a symlink, of exactly ``start`` bytes."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd, "ab") as out:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != start:
            return False
        with fs.open_input_file(key) as source:
            for offset in range(start, end, COPY_CHUNK_BYTES):
                chunk = source.read_at(min(COPY_CHUNK_BYTES, end - offset), offset)
                if not chunk:
                    raise StorageError(f"object {key!r} ended at byte {offset} while {end} were listed")
                out.write(chunk)
    return True


def _download_new(fs, key: str, target: Path, incoming: Path) -> None:
    """Download object ``key`` whole under a temporary name in ``incoming``, then rename it onto
    ``target`` (a symlink there is replaced, not followed)."""
    import pyarrow.fs

    incoming.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=incoming)
    os.close(fd)
    try:
        pyarrow.fs.copy_files(
            key, name, fs, pyarrow.fs.LocalFileSystem(), chunk_size=COPY_CHUNK_BYTES, use_threads=False
        )
        os.chmod(name, 0o644)
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def delete(uri: str) -> None:
    """Delete the file at ``uri`` if there is one."""
    import pyarrow.fs

    fs, path = open_uri(uri)
    with _operation("deleting", uri):
        if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
            fs.delete_file(path)


def delete_folder(location: str | Path) -> None:
    """Delete a folder and everything in it, at a local path or a URI."""
    if not is_uri(location):
        shutil.rmtree(location)
        return
    uri = str(location)
    fs, path = open_uri(uri)
    with _operation("deleting the folder", uri):
        fs.delete_dir(path)


@contextlib.contextmanager
def local_copy(location: str | Path) -> Iterator[Path]:
    """A local path, as is; a URI's folder, downloaded into a temporary folder (removed after)."""
    if not is_uri(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="srgan-dist-") as scratch:
        copy = Path(scratch) / name_of(str(location))
        if not download(str(location), copy):
            raise StorageError(f"downloading {location} failed: nothing there")
        yield copy


def check_writable(uri: str) -> None:
    """Pre-flight for a run in cloud storage: the bucket exists and a file can be written and
    deleted under ``uri``. Raises ``StorageError`` saying which of these failed."""
    import pyarrow.fs

    fs, path = open_uri(uri)
    bucket = path.split("/", 1)[0]
    with _operation("checking the bucket of", uri):
        found = fs.get_file_info(bucket).type != pyarrow.fs.FileType.NotFound
    if not found:
        raise StorageError(
            f"checking the bucket of {uri} failed: bucket {bucket!r} does not exist (or these "
            "credentials cannot see it); create it or fix run.storage"
        )
    marker = f"{path}/{WRITE_CHECK_FILE}"
    with _operation("writing a test file to", uri), fs.open_output_stream(marker) as stream:
        stream.write(b"srgan-dist pre-flight\n")
    with _operation("deleting the test file from", uri):
        fs.delete_file(marker)
