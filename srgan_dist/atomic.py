"""Atomic file writes: readers see the old file or the whole new one, never half of one.

Every file the project writes in place of another (``summary.json``, checkpoint manifests, stage
stop files, generators, scan caches, upscaled images) goes through :func:`atomic_path`: the data
is written to a new temporary file beside the target (created with ``O_EXCL``, so nothing planted
there is followed) and renamed over it. The rename replaces a symlink at the target itself,
never the file it points to, so a link planted in an output folder cannot redirect a write.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# mkstemp makes 0600 files; a replaced file gets the mode a plain open() would give it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A fresh temporary path beside ``target``, renamed onto ``target`` when the block ends
    normally and removed when it raises. It keeps ``target``'s suffix (for writers such as PIL
    that choose the format by it)."""
    target = Path(target)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}")
    os.close(fd)
    partial = Path(name)
    partial.chmod(0o666 & ~_UMASK)
    try:
        yield partial
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as partial:
        partial.write_text(text)


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as partial:
        partial.write_bytes(data)
