"""Sub-commands of ``srgan-dist`` (argparse only at import time; see ``srgan_dist.cli``)."""

from __future__ import annotations

import argparse
import sys


def not_built(issue: str):
    """A ``func`` for a planned sub-command that is not built yet: says so and exits 2."""

    def run(args: argparse.Namespace) -> int:
        print(f"srgan-dist {args.command}: not built yet ({issue})", file=sys.stderr)
        return 2

    return run
