"""``submit``, ``status``, ``logs``, ``stop``: run training as a Ray job on a cluster."""

from __future__ import annotations

from srgan_dist.commands import not_built


def register(subparsers) -> None:
    for name, text in (
        ("submit", "Submit a training job to a Ray cluster's job server"),
        ("status", "Show a submitted job's status"),
        ("logs", "Print or follow a submitted job's logs"),
        ("stop", "Stop a submitted job"),
    ):
        parser = subparsers.add_parser(name, help=f"{text} [not built yet]", description=text)
        parser.set_defaults(func=not_built("cluster operations issue"))
