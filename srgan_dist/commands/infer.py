"""``upscale``, ``evaluate``, ``export``: use a trained generator.

    srgan-dist upscale  --weights runs/demo --input photos/ --output upscaled/
    srgan-dist evaluate --weights runs/demo --hr data/sample/val --json runs/demo/eval.json
    srgan-dist export   --weights runs/demo --format onnx

``--weights`` is a ``generator_<stage>.safetensors`` file or a run directory (its final stage:
srgan if exported, else srresnet; ``--stage`` picks one). Exit codes: 0 success, 1 some inputs
were unreadable (upscale) or could not be scored (evaluate) or an export failed its parity check,
2 bad arguments or weights (or, for upscale, results that exist without --overwrite).
"""

from __future__ import annotations

import argparse
import json
import sys

from srgan_dist.errors import UserError

WEIGHTS_HELP = (
    "generator_<stage>.safetensors (with its .json beside it or config in its metadata), "
    "or a run directory <storage>/<name> (uses its final generator; see --stage)"
)
STAGE_HELP = "with a run directory: the stage whose generator to use (srresnet or srgan; default the last)"


def _add_weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, metavar="FILE_OR_RUN_DIR", help=WEIGHTS_HELP)
    parser.add_argument("--stage", default=None, help=STAGE_HELP)


def _add_tiling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tile", type=int, default=192, metavar="N",
        help="tile side in LR pixels (see srgan_dist/infer.py for how tiles are blended); 0 = whole "
        "image at once; otherwise at least 16, since each tile is one forward pass and most of a "
        "smaller one sits beside a zero-padded edge (default 192)",
    )  # fmt: skip
    parser.add_argument(
        "--overlap", type=int, default=32, metavar="M",
        help="pixels neighbouring tiles share and blend; at most tile/2 (default 32)",
    )  # fmt: skip
    parser.add_argument(
        "--batch", type=int, default=1, metavar="K", help="tiles per forward pass (default 1)"
    )
    parser.add_argument(
        "--device", default=None, metavar="cpu|cuda[:N]",
        help="where the generator runs (default: cuda if available, else cpu); cuda without a GPU, "
        "or cuda:N with N not below the number of visible GPUs, fails",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N", help="CPU threads for torch (default: torch's)"
    )


def _fail(command: str, error: Exception) -> int:
    print(f"srgan-dist {command}: error: {error}", file=sys.stderr)
    return 2


def _setup(args: argparse.Namespace):
    """Torch threads, tiling and device from the shared options."""
    import torch

    from srgan_dist.infer import Tiling, resolve_device

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return Tiling(tile=args.tile, overlap=args.overlap, batch=args.batch), resolve_device(args.device)


def run_upscale(args: argparse.Namespace) -> int:
    from srgan_dist.upscale import collect_inputs, upscale_files

    try:
        tiling, device = _setup(args)
        inputs = collect_inputs(args.input)
        report = upscale_files(
            args.weights, inputs, args.output, tiling=tiling, device=str(device), stage=args.stage,
            overwrite=args.overwrite,
        )  # fmt: skip
    except UserError as error:
        return _fail("upscale", error)
    print(f"wrote {len(report.written)} image(s) at x{report.spec.scale} to {args.output}")
    if report.failed:
        print(f"{len(report.failed)} input(s) could not be read and were skipped:", file=sys.stderr)
        for _path, reason in report.failed:
            print(f"  {reason}", file=sys.stderr)
        return 1
    return 0


def _check_json_path(path: str) -> None:
    """``--json``: its folder must exist and it must not be one, checked before any scoring."""
    import os

    if os.path.isdir(path):
        raise UserError(f"--json {path} is a folder; give a file name")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise UserError(f"--json {path}: folder {folder} does not exist")


def run_evaluate(args: argparse.Namespace) -> int:
    from srgan_dist.evaluate import evaluate
    from srgan_dist.generator_io import find_generator, load_generator

    try:
        if args.json:
            _check_json_path(args.json)
        tiling, device = _setup(args)
        path = find_generator(args.weights, args.stage)
        model, spec = load_generator(path)
        if args.scale is not None and args.scale != spec.scale:
            raise UserError(f"--scale {args.scale} differs from the generator's scale {spec.scale} ({path})")
        report = evaluate(
            model.to(device), spec, args.hr, weights_label=str(path), lr_dir=args.lr_dir,
            tiling=tiling, device=device, lpips=args.lpips,
        )  # fmt: skip
    except UserError as error:
        return _fail("evaluate", error)
    print(f"{path} (x{spec.scale}, stage {spec.stage or '?'}, step {spec.step}) on {args.hr}")
    print(report.table())
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report.to_json(), handle, indent=2)
            handle.write("\n")
        print(f"wrote {args.json}")
    if report.failed:
        print(f"{len(report.failed)} image(s) could not be scored:", file=sys.stderr)
        for path, reason in report.failed:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def run_export(args: argparse.Namespace) -> int:
    from srgan_dist.export import ExportError, export_generator

    try:
        result = export_generator(args.weights, args.format, args.output, args.stage)
    except ExportError as error:
        print(f"srgan-dist export: {error}", file=sys.stderr)
        return 1
    except UserError as error:
        return _fail("export", error)
    for check in result.checks:
        print(
            f"parity vs PyTorch: input {'x'.join(map(str, check.input_shape))} → "
            f"{'x'.join(map(str, check.output_shape))}, max |diff| {check.max_abs_diff:.2e}"
        )
    print(f"wrote {result.path} ({args.format}, x{result.spec.scale}, stage {result.spec.stage or '?'})")
    return 0


def register(subparsers) -> None:
    upscale = subparsers.add_parser(
        "upscale",
        help="Upscale images with a trained generator (tiled)",
        description=(
            "Upscale each input by the generator's scale and write <stem>.png into --output. "
            "Grayscale stays grayscale, 16-bit grayscale stays 16-bit, alpha is upscaled with "
            "bicubic, EXIF orientation is applied. Unreadable inputs are skipped, listed at the end, "
            "and make the exit code 1. Existing files in --output are never replaced unless "
            "--overwrite is given: otherwise they are listed and nothing is written (exit code 2)."
        ),
    )
    _add_weights(upscale)
    upscale.add_argument("--input", required=True, metavar="FILE_OR_DIR", help="an image or a folder")
    upscale.add_argument("--output", required=True, metavar="DIR", help="folder for the <stem>.png results")
    upscale.add_argument(
        "--overwrite", action="store_true", help="replace results that already exist in --output"
    )
    _add_tiling(upscale)
    upscale.set_defaults(func=run_upscale)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="PSNR/SSIM of a generator and of bicubic on HR images",
        description=(
            "For each HR image: crop to a multiple of the scale, make LR with Pillow bicubic "
            "(antialiased) unless --lr-dir is given, upscale with the generator and with bicubic, "
            "and report PSNR/SSIM on Y (BT.601) with border = scale: per image, means, and the "
            "gain over bicubic. Images that cannot be scored (unreadable, too small, no LR image) "
            "are listed and make the exit code 1; the others are still scored (and --json then "
            "holds a 'failed' list)."
        ),
    )
    _add_weights(evaluate)
    evaluate.add_argument("--hr", required=True, metavar="DIR", help="folder of HR (ground-truth) images")
    evaluate.add_argument(
        "--scale", type=int, default=None,
        help="expected scale; must match the generator's (default: the generator's)",
    )  # fmt: skip
    evaluate.add_argument(
        "--lr-dir", default=None, metavar="DIR",
        help="use these LR images (same stem, or <stem>x4 / <stem>_x4) instead of making them",
    )  # fmt: skip
    evaluate.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    evaluate.add_argument(
        "--lpips", action="store_true",
        help="also score LPIPS (needs the lpips package and cached AlexNet weights; says so if unavailable)",
    )  # fmt: skip
    _add_tiling(evaluate)
    evaluate.set_defaults(func=run_evaluate)

    export = subparsers.add_parser(
        "export",
        help="Export a generator to safetensors, ONNX or TorchScript",
        description=(
            "safetensors: re-save the chosen generator (file + JSON). onnx / torchscript: an "
            "upscaler taking RGB in [0, 1] (N, 3, h, w) and returning RGB in [0, 1] at scale times "
            "the size, dynamic batch/height/width, checked against PyTorch on two input sizes."
        ),
    )
    _add_weights(export)
    export.add_argument("--format", required=True, choices=("safetensors", "onnx", "torchscript"))
    export.add_argument(
        "--output", default=None, metavar="FILE",
        help="where to write (default: beside the weights, generator_<stage>.onnx / .pt)",
    )  # fmt: skip
    export.set_defaults(func=run_export)
