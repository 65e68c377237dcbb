"""Upscale throughput (output megapixels/s) and peak memory of ``srgan_dist.infer.upscale_rgb``.

    .venv/bin/python bench/upscale_throughput.py                  # CPU, writes BENCHMARKS.md "## Upscaling"
    .venv/bin/python bench/upscale_throughput.py --device cuda    # on a GPU machine
    .venv/bin/python bench/upscale_throughput.py --peak-output none --no-write   # quick look

The generator is the paper's size (16 blocks, 64 channels, x4, batch norm in eval mode), randomly
initialised: speed and memory do not depend on the weights' values. Each measurement runs in a
fresh subprocess (so torch's thread count and the peak-memory high-water mark are its own):

- throughput: an LR image of ``--lr-size`` upscaled untiled and tiled (default tile/overlap),
  with 1 and 2 CPU threads; one warm-up pass first; the best of ``--repeats`` timed passes;
- peak memory: one tiled upscale to ``--peak-output`` (default 4000x3000), measured as the
  process's peak resident set (``ru_maxrss``; on CUDA also ``torch.cuda.max_memory_allocated``),
  next to the resident set just before the upscale (torch, model and input already loaded).

Writing replaces the whole "## Upscaling" section of BENCHMARKS.md (notes under the table too).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from _report import write_section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "Upscaling"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process; prints one JSON line."""
    import numpy as np
    import torch

    from srgan_dist.generator_io import GeneratorSpec
    from srgan_dist.infer import Tiling, count_tiles, resolve_device, upscale_rgb

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    model = GeneratorSpec(scale=4, num_blocks=16, channels=64, norm="batch").build().eval().to(device)
    width, height = args.width, args.height
    image = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
    tiling = Tiling(tile=args.tile, overlap=args.overlap, batch=args.batch)
    warm = image[: min(height, 64), : min(width, 64)]
    upscale_rgb(model, warm, Tiling(tile=0), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = rss_mib()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        upscale_rgb(model, image, tiling, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {
        "device": str(device),
        "threads": args.threads,
        "lr": f"{width}x{height}",
        "output": f"{width * 4}x{height * 4}",
        "tile": args.tile,
        "overlap": args.overlap,
        "tiles": count_tiles(height, width, tiling),
        "seconds": min(times),
        "output_mp_per_s": width * height * 16 / 1e6 / min(times),
        "rss_before_mib": rss_before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps(result))


def measure(lr: tuple[int, int], tile: int, overlap: int, threads: int, device: str, repeats: int) -> dict:
    command = [
        sys.executable, __file__, "--worker", "--width", str(lr[0]), "--height", str(lr[1]),
        "--tile", str(tile), "--overlap", str(overlap), "--threads", str(threads),
        "--device", device, "--repeats", str(repeats),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(part) for part in text.lower().split("x"))
    return width, height


def table(rows: list[dict]) -> str:
    lines = [
        "| device | threads | LR → output | tiling | tiles | seconds | output MP/s | RSS before | peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        tiling = "untiled" if row["tile"] == 0 else f"tile {row['tile']}, overlap {row['overlap']}"
        peak = f"{row['peak_rss_mib']:.0f} MiB"
        if "peak_cuda_mib" in row:
            peak += f" (CUDA {row['peak_cuda_mib']:.0f} MiB)"
        cells = [row["device"], row["threads"], f"{row['lr']} → {row['output']}", tiling, row["tiles"]]
        cells += [f"{row['seconds']:.2f}", f"{row['output_mp_per_s']:.4f}"]
        cells += [f"{row['rss_before_mib']:.0f} MiB", peak]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main() -> None:
    from srgan_dist.infer import DEFAULT_OVERLAP, DEFAULT_TILE

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--height", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help=argparse.SUPPRESS)
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--lr-size", default="256x128", help="LR WxH for throughput (default 256x128)")
    parser.add_argument("--thread-counts", default="1,2", help="CPU thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per measurement; best kept")
    parser.add_argument(
        "--peak-output", default="4000x3000", help="output WxH for the tiled peak-memory run, or none"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    started = time.perf_counter()
    lr = parse_size(args.lr_size)
    thread_counts = [1] if args.device.startswith("cuda") else [int(t) for t in args.thread_counts.split(",")]
    rows = []
    for threads in thread_counts:
        for tile in (0, DEFAULT_TILE):
            rows.append(measure(lr, tile, DEFAULT_OVERLAP, threads, args.device, args.repeats))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    if args.peak_output != "none":
        width, height = parse_size(args.peak_output)
        if width % 4 or height % 4:
            raise SystemExit(f"--peak-output {args.peak_output}: both sides must be multiples of 4")
        rows.append(measure((width // 4, height // 4), DEFAULT_TILE, DEFAULT_OVERLAP, max(thread_counts),
                            args.device, 1))  # fmt: skip
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    elapsed = time.perf_counter() - started

    command = "python bench/upscale_throughput.py " + " ".join(sys.argv[1:])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible"
    text = "\n".join(
        [
            f"`{command.strip()}` — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"{machine}, load average before start {os.getloadavg()[0]:.1f}, took {elapsed:.0f} s.",
            "",
            "Generator: paper size (16 blocks, 64 channels, x4, BN in eval mode), randomly initialised — "
            "speed and memory do not depend on the weights. Output MP/s = output megapixels per second "
            "(best of the timed passes, after a warm-up). Peak RSS is the whole process's high-water "
            "mark (ru_maxrss), RSS before is torch + model + input just before the upscale.",
            "",
            table(rows),
            "",
        ]
    )
    print(f"\n## {SECTION}\n\n{text}")
    if not args.no_write:
        path = write_section(SECTION, text)
        print(f"updated {path} (## {SECTION})")


if __name__ == "__main__":
    main()
