"""The one way a benchmark script writes its results: its own ``## <title>`` section of
BENCHMARKS.md, replaced in place (or appended the first time), every other section left alone.
The scripts import it as ``from _report import write_section`` (``bench/`` is their sys.path[0]).
"""

from __future__ import annotations

import re
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def write_section(title: str, body: str, path: Path = BENCHMARKS_MD) -> Path:
    """Make ``## <title>`` followed by ``body`` a section of ``path``; return ``path``."""
    current = path.read_text() if path.is_file() else "# Benchmarks\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: section + "\n", current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + section
    path.write_text(updated.rstrip("\n") + "\n")
    return path
