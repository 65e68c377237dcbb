"""Data throughput: samples/s of the PIL DataLoader vs DALI (CPU, and GPU "mixed" when present).

Same images, same thread count, same batch (16 HR crops of 96 px, x4) for every loader, on two
inputs: raw 2K-like PNGs (DIV2K-sized mosaics of real photos) and the same photos after
``srgan-dist prepare`` (480 px sub-images, step 240; JPEG q95 and PNG). Also times one SRResNet
training step (forward + backward + Adam) to show whether the data path keeps up. Prints a table
and writes it into the "## Data throughput" section of BENCHMARKS.md.

    .venv/bin/python bench/data_throughput.py                 # ~3-5 minutes on 2 CPU cores
    .venv/bin/python bench/data_throughput.py --seconds 3 --images 4 --no-write   # quick look
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from srgan_dist.config import DataConfig
from srgan_dist.data import build_train_loader, load_rgb, scan_images
from srgan_dist.data.prepare import prepare_subimages, write_sample_data

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 2040, 1356  # a typical DIV2K HR size


def make_2k_photos(folder: Path, count: int) -> list[str]:
    """DIV2K-sized PNGs tiled from the sample-data photos (real texture for PNG to encode)."""
    samples = write_sample_data(folder.parent / "sample")
    photos = [load_rgb(str(p)) for p in samples["train"] + samples["val"]]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        canvas = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        for top in range(0, HEIGHT, 300):
            for left in range(0, WIDTH, 300):
                photo = photos[rng.integers(len(photos))]
                h, w = min(300, HEIGHT - top), min(300, WIDTH - left)
                y, x = rng.integers(0, photo.shape[0] - h + 1), rng.integers(0, photo.shape[1] - w + 1)
                canvas[top : top + h, left : left + w] = photo[y : y + h, x : x + w]
        path = folder / f"photo_{i:02d}.png"
        Image.fromarray(canvas).save(path)  # PNG at default compression, as DIV2K ships
        paths.append(str(path))
    return paths


def measure(files, kind, device, threads, seconds, batch_size=16) -> float:
    loader = build_train_loader(
        files,
        loader=kind,
        scale=4,
        hr_patch_size=96,
        batch_size=batch_size,
        rank=0,
        world_size=1,
        device=device,
        seed=0,
        num_threads=threads,
    )
    for _ in range(2):  # warm up (worker start, pipeline prefetch)
        next(loader)
    if device.type == "cuda":
        torch.cuda.synchronize()
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or batches < 3:
        next(loader)
        batches += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    loader.close()
    return batches * batch_size / elapsed


def training_step_rate(device, seconds, batch_size=16) -> float:
    """Samples/s of one SRResNet (B=16, 64 ch) MSE step on 24x24 LR → 96x96 HR."""
    from srgan_dist.models import Generator

    model = Generator().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    lr = torch.rand(batch_size, 3, 24, 24, device=device)
    hr = torch.rand(batch_size, 3, 96, 96, device=device) * 2 - 1

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(lr), hr).backward()
        optimizer.step()

    step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 2:
        step()
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def write_section(text: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text() if path.is_file() else "# Benchmarks\n"
    section = "## Data throughput\n\n" + text.strip() + "\n"
    pattern = re.compile(r"^## Data throughput\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: section + "\n", current).rstrip() + "\n"
    else:
        updated = current.rstrip() + "\n\n" + section
    path.write_text(updated)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=8, help="2K photos to generate (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="decode threads / DataLoader workers")
    parser.add_argument("--seconds", type=float, default=10.0, help="timing window per row")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="srgan-bench-") as tmp:
        tmp = Path(tmp)
        raw = make_2k_photos(tmp / "raw", args.images)
        inputs = {f"raw 2K PNG ({args.images} x {WIDTH}x{HEIGHT})": raw}
        cfg = DataConfig(on_bad_file="error", num_threads=args.threads)
        for fmt in ("jpeg", "png"):
            out = tmp / f"sub_{fmt}"
            start = time.perf_counter()
            prepare_subimages(
                str(tmp / "raw"), out, fmt=fmt, workers=args.threads, data_cfg=cfg, progress=False
            )
            took = time.perf_counter() - start
            tiles = scan_images(
                str(out), role="bench", min_side=96, data_cfg=cfg, cache_dir=tmp / f"c_{fmt}"
            ).files
            label = f"prepared 480px {'JPEG q95' if fmt == 'jpeg' else 'PNG'} ({len(tiles)} tiles)"
            inputs[label] = tiles
            print(f"prepare --format {fmt}: {len(tiles)} tiles in {took:.1f} s")

        loaders = [("PIL DataLoader", "pil", torch.device("cpu")), ("DALI CPU", "dali", torch.device("cpu"))]
        if torch.cuda.is_available():
            loaders.append(("DALI GPU (mixed)", "dali", torch.device("cuda", 0)))
        rows = []
        for label, files in inputs.items():
            rates = {}
            for name, kind, device in loaders:
                rates[name] = measure(files, kind, device, args.threads, args.seconds)
                print(f"{label:45s} {name:18s} {rates[name]:8.1f} samples/s")
            rows.append((label, rates))
        step_cpu = training_step_rate(torch.device("cpu"), args.seconds)
        step_gpu = (
            training_step_rate(torch.device("cuda", 0), args.seconds) if torch.cuda.is_available() else None
        )

    base = rows[0][1]["PIL DataLoader"]
    header = "| input | " + " | ".join(name for name, _, _ in loaders) + " | DALI CPU / PIL |"
    if torch.cuda.is_available():
        header += " DALI GPU / PIL |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for label, rates in rows:
        pil = rates["PIL DataLoader"]
        cells = [f"{rates[name]:.0f}" for name, _, _ in loaders]
        ratios = [f"{rates['DALI CPU'] / pil:.2f}x"]
        if "DALI GPU (mixed)" in rates:
            ratios.append(f"{rates['DALI GPU (mixed)'] / pil:.2f}x")
        lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
    gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores" + (
        f", {gpu_name}" if gpu_name else ", no GPU"
    )
    best_cpu = max(rates["DALI CPU"] for _, rates in rows)
    text = "\n".join(
        [
            "Samples/s (one sample = one 96 px HR crop + its 24 px LR, x4, random flips/rotations), "
            f"batch 16, {args.threads} decode threads for every loader (PIL: {args.threads} DataLoader "
            "worker processes; DALI: `num_threads`), one run, best-effort on a shared machine.",
            "",
            f"- command: `.venv/bin/python bench/data_throughput.py --images {args.images} --threads "
            f"{args.threads} --seconds {args.seconds:g}`",
            f"- machine: {machine}; torch {torch.__version__}",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            "",
            *lines,
            "",
            "DALI GPU (mixed): "
            + ("measured above." if gpu_name else "not measured: no GPU lent to this run."),
            "",
            "Training-step consumption (SRResNet 16 blocks x 64 ch, batch 16, MSE, Adam): "
            f"{step_cpu:.1f} samples/s on this CPU"
            + (f", {step_gpu:.0f} samples/s on {gpu_name}" if step_gpu else "")
            + ". Every data row above "
            + ("keeps up with" if best_cpu >= step_cpu else "falls behind")
            + " CPU training"
            + ("." if step_gpu else "; GPU step rate not measured here (no GPU)."),
            "",
            f"PIL baseline on raw 2K PNG: {base:.0f} samples/s.",
        ]
    )
    print("\n" + text)
    if not args.no_write:
        write_section(text)
        print(f"\nwrote the 'Data throughput' section of {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
