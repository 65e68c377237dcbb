"""``tensorboard``: serve a run's TensorBoard logs."""

from __future__ import annotations

from srgan_dist.commands import not_built


def register(subparsers) -> None:
    text = "Serve a run's TensorBoard logs (127.0.0.1 unless --host is given)"
    parser = subparsers.add_parser("tensorboard", help=f"{text} [not built yet]", description=text)
    parser.set_defaults(func=not_built("training issue"))
