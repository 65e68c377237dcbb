"""``prepare`` and ``sample-data``: get HR photos into the form training reads fastest."""

from __future__ import annotations

from srgan_dist.commands import not_built


def register(subparsers) -> None:
    for name, text in (
        ("prepare", "Cut large HR photos into sub-images for fast loading"),
        ("sample-data", "Write a small set of real photos for the demo and tests"),
    ):
        parser = subparsers.add_parser(name, help=f"{text} [not built yet]", description=text)
        parser.set_defaults(func=not_built("data issue"))
