"""Sub-commands of ``srgan-dist`` (argparse only at import time; see ``srgan_dist.cli``)."""

from __future__ import annotations

import argparse


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args`` that also takes ``key.path=value`` overrides after options.

    argparse fills a ``nargs="*"`` positional from one run of words only, so in
    ``--config X a=1 --name n b=2`` the ``b=2`` would be rejected. Commands that take overrides
    (``train``, ``submit``) get every such word appended, in command-line order (the last one
    wins); anything else left over is still an error.
    """
    args, extras = parser.parse_known_args(argv)
    if extras and hasattr(args, "overrides"):
        late = [word for word in extras if "=" in word and not word.startswith("-")]
        args.overrides = [*args.overrides, *late]
        extras = [word for word in extras if word not in late]
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args
