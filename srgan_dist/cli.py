"""The ``srgan-dist`` console script: one sub-command per user task.

Each module in ``COMMAND_MODULES`` adds its sub-commands with ``register(subparsers)`` and sets
``func(args) -> exit code``. At module level command modules import only argparse and light
modules of this package (errors, run-dir names, storage URIs, the shared training flags of
``commands/train.py``), so ``--help`` stays fast; torch, Ray, DALI and numpy are imported when a
command runs (``tests/test_cli.py`` checks).
"""

from __future__ import annotations

import argparse
import logging
import sys

from srgan_dist.commands import cluster, data, doctor, infer, parse_with_overrides, tensorboard, train

COMMAND_MODULES = (train, cluster, doctor, data, infer, tensorboard)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srgan-dist",
        description="Train SRGAN on a Ray cluster, then upscale, evaluate and export.",
    )
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_with_overrides(build_parser(), argv)
    if getattr(args, "setup_logging", None):  # `train`: a quiet console, see srgan_dist/console.py
        args.setup_logging(args)
    else:
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
