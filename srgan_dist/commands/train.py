"""``train``: run every stage of a config (``python launch.py`` is the same command)."""

from __future__ import annotations

from srgan_dist.commands import not_built


def register(subparsers) -> None:
    text = "Train SRResNet then SRGAN on Ray Train workers"
    parser = subparsers.add_parser("train", help=f"{text} [not built yet]", description=text)
    parser.set_defaults(func=not_built("training issue"))
