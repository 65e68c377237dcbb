"""``upscale``, ``evaluate``, ``export``: use a trained generator."""

from __future__ import annotations

from srgan_dist.commands import not_built


def register(subparsers) -> None:
    for name, text in (
        ("upscale", "Upscale images with a trained generator (tiled)"),
        ("evaluate", "PSNR/SSIM of a generator and of bicubic on HR images"),
        ("export", "Export a generator to safetensors, ONNX or TorchScript"),
    ):
        parser = subparsers.add_parser(name, help=f"{text} [not built yet]", description=text)
        parser.set_defaults(func=not_built("inference/export issue"))
