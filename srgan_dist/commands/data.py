"""``prepare`` and ``sample-data``: get HR photos into the form training reads fastest."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="Cut large HR photos into sub-images for fast loading",
        description=(
            "Scan SRC (a folder, a list file of HR photos, or an s3:// / gs:// folder), then cut every usable image into "
            "overlapping sub-images in OUT (BasicSR style), with OUT/manifest.jsonl. Resumable: "
            "re-running skips images already done. Bad files are listed (and skipped unless "
            "--on-bad-file error)."
        ),
    )
    parser.add_argument(
        "src", metavar="SRC", help="folder (recursive), list file or s3:// / gs:// folder of HR images"
    )
    parser.add_argument(
        "out", metavar="OUT", help="output folder (or s3:// / gs:// folder) for the sub-images"
    )
    parser.add_argument("--tile", type=int, default=480, help="sub-image side in px (default 480)")
    parser.add_argument("--step", type=int, default=240, help="distance between tiles in px (default 240)")
    parser.add_argument(
        "--format",
        choices=("jpeg", "png"),
        default="jpeg",
        help="jpeg (default: GPU nvJPEG + ROI decoding, fastest) or png (lossless, CPU-decoded)",
    )
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="parallel processes (default: all CPUs)"
    )
    parser.add_argument(
        "--min-side", type=int, default=96, help="reject images smaller than this on a side (default 96)"
    )
    parser.add_argument("--on-bad-file", choices=("error", "skip"), default="skip")
    parser.add_argument("--verify", choices=("header", "full"), default="header")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_prepare)

    parser = subparsers.add_parser(
        "sample-data",
        help="Write a small set of real photos for the demo and tests",
        description=(
            "Write real photographs shipped with scikit-image (no internet needed) as PNG into "
            "OUT/train and OUT/val (disjoint). Existing files are kept."
        ),
    )
    parser.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    parser.set_defaults(func=run_sample_data)


def run_prepare(args: argparse.Namespace) -> int:
    from srgan_dist.config import DataConfig
    from srgan_dist.data.prepare import MANIFEST_FILE, prepare_subimages
    from srgan_dist.errors import UserError
    from srgan_dist.rundir import join_run_location as join_location
    from srgan_dist.storage import StorageError

    data_cfg = DataConfig(on_bad_file=args.on_bad_file, verify=args.verify, num_threads=max(1, args.workers))
    try:
        report = prepare_subimages(
            args.src,
            args.out,
            tile=args.tile,
            step=args.step,
            fmt=args.format,
            quality=args.quality,
            workers=args.workers,
            min_side=args.min_side,
            data_cfg=data_cfg,
            progress=not args.no_progress,
        )
    except (UserError, StorageError) as error:
        print(f"srgan-dist prepare: {error}", file=sys.stderr)
        return 1
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}")
    for path, rule in report.converted:
        print(f"converted {path}: {rule}")
    print(
        f"prepare: {report.written_sources} image(s) cut now, {report.resumed_sources} already done, "
        f"{len(report.skipped)} skipped; {report.tiles} sub-images in {args.out} "
        f"(manifest: {join_location(args.out, MANIFEST_FILE)})"
    )
    return 0


def run_sample_data(args: argparse.Namespace) -> int:
    from srgan_dist.data.prepare import write_sample_data
    from srgan_dist.data.scan import DataError

    try:
        written = write_sample_data(args.out)
    except DataError as error:
        print(f"srgan-dist sample-data: {error}", file=sys.stderr)
        return 1
    for split, paths in written.items():
        names = ", ".join(path.name for path in paths)
        print(f"{split}: {len(paths)} photo(s) in {os.path.join(args.out, split)}: {names}")
    return 0
