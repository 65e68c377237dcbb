"""Training-side benchmarks: Ray overhead, weak scaling, start-up time (and bf16 on a GPU).

    .venv/bin/python bench/train_scaling.py             # prints a table, writes it into BENCHMARKS.md
    .venv/bin/python bench/train_scaling.py --steps 40 --no-write

What is measured (SRResNet stage, the demo model: 4 blocks x 32 ch, x4, 64 px crops, batch 8 per
worker, DALI on the CPU, 1 torch thread per worker, no validation or checkpoints inside the window):
- overhead: seconds per step of one Ray Train worker vs. the same loop in a bare process;
- weak scaling: samples/s of 2 workers vs 1 worker (each worker keeps batch 8);
- start-up: seconds from starting ``python launch.py`` to its first logged training step;
- on a GPU: samples/s with fp32 vs bf16 autocast + channels_last (paper-size model, 96 px, batch 16).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _report import write_section

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["model.num_blocks=4", "model.channels=32", "model.norm=none"]


def stage_overrides(steps: int, batch: int = 8, patch: int = 64) -> list[str]:
    return [
        "train.stages=[srresnet]",
        f"srresnet.iterations={steps}",
        f"srresnet.batch_size={batch}",
        f"srresnet.hr_patch_size={patch}",
        f"srresnet.log_interval={steps}",
        f"srresnet.checkpoint_interval={steps}",
        f"srresnet.val_interval={steps}",
        "data.val=",
        "data.num_threads=1",
    ]


def bare_loop(train_dir: Path, steps: int, warmup: int) -> float:
    """Seconds per step of the SRResNet step + DALI batches in this process (1 thread)."""
    import contextlib

    import torch

    from srgan_dist.config import LossConfig
    from srgan_dist.data import build_train_loader
    from srgan_dist.models import Generator
    from srgan_dist.train.steps import StepContext, srresnet_step

    torch.set_num_threads(1)
    torch.manual_seed(0)
    files = sorted(str(p) for p in train_dir.iterdir())
    loader = build_train_loader(
        files, loader="dali", scale=4, hr_patch_size=64, batch_size=8, rank=0, world_size=1,
        device=torch.device("cpu"), seed=0, num_threads=1,
    )  # fmt: skip
    generator = Generator(num_blocks=4, channels=32, scale=4, norm="none")
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-4, betas=(0.9, 0.999))
    ctx = StepContext(loss=LossConfig(), autocast=contextlib.nullcontext)
    batches = iter(loader)
    for _ in range(warmup):
        srresnet_step(generator, optimizer, *next(batches), ctx)
    start = time.perf_counter()
    for _ in range(steps):
        srresnet_step(generator, optimizer, *next(batches), ctx)
    elapsed = time.perf_counter() - start
    loader.close()
    return elapsed / steps


def ray_run(train_dir: Path, storage: Path, name: str, workers: int, steps: int) -> dict:
    """Train ``steps`` steps on ``workers`` Ray workers; return the stage's summary entry."""
    command = [
        sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "configs" / "demo.yaml"),
        "--name", name, "--storage", str(storage), "--workers", str(workers),
        f"data.train={train_dir}", *MODEL, *stage_overrides(steps),
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first_step_s = None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if first_step_s is None and re.search(r"\[srresnet\] step \d+/", line):
            first_step_s = time.perf_counter() - started
    if process.wait() != 0:
        sys.stdout.write("".join(lines[-40:]))
        raise SystemExit(f"training run {name} failed")
    entry = json.loads((storage / name / "summary.json").read_text())["stages"]["srresnet"]
    entry["process_s"] = time.perf_counter() - started
    entry["first_log_s"] = first_step_s
    return entry


def startup_seconds(train_dir: Path, storage: Path) -> float:
    """Seconds from `python launch.py` to the first logged step (log_interval=1)."""
    command = [
        sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "configs" / "demo.yaml"),
        "--name", "startup", "--storage", str(storage), "--workers", "1",
        f"data.train={train_dir}", *MODEL, *stage_overrides(2), "srresnet.log_interval=1",
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = None
    for line in process.stdout:
        if seconds is None and "[srresnet] step 1/" in line:
            seconds = time.perf_counter() - started
    process.wait()
    if seconds is None:
        raise SystemExit("start-up run never logged step 1")
    return seconds


def gpu_precision(steps: int) -> tuple[float, float] | None:
    """Samples/s of the paper-size generator step in fp32 vs bf16 + channels_last, or None."""
    import contextlib

    import torch

    if not torch.cuda.is_available():
        return None
    from srgan_dist.config import LossConfig
    from srgan_dist.models import Generator
    from srgan_dist.train.steps import StepContext, srresnet_step

    def measure(bf16: bool) -> float:
        torch.manual_seed(0)
        generator = Generator().cuda()
        memory = torch.channels_last if bf16 else torch.contiguous_format
        generator.to(memory_format=memory)
        optimizer = torch.optim.Adam(generator.parameters(), lr=1e-4)

        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

        ctx = StepContext(loss=LossConfig(), autocast=autocast)
        lr = torch.rand(16, 3, 24, 24, device="cuda").contiguous(memory_format=memory)
        hr = (torch.rand(16, 3, 96, 96, device="cuda") * 2 - 1).contiguous(memory_format=memory)
        for _ in range(10):
            srresnet_step(generator, optimizer, lr, hr, ctx)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            srresnet_step(generator, optimizer, lr, hr, ctx)
        torch.cuda.synchronize()
        return steps * 16 / (time.perf_counter() - start)

    return measure(False), measure(True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per measurement")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch BENCHMARKS.md")
    args = parser.parse_args()

    from srgan_dist.data.prepare import write_sample_data

    work = Path(tempfile.mkdtemp(prefix="srgan-bench-"))
    write_sample_data(work / "sample")
    train_dir = work / "sample" / "train"

    startup = startup_seconds(train_dir, work / "runs")
    bare = bare_loop(train_dir, args.steps, warmup=5)
    one = ray_run(train_dir, work / "runs", "one", 1, args.steps)
    two = ray_run(train_dir, work / "runs", "two", 2, args.steps)
    one_step_s = one["train_time_s"] / one["steps"]
    gpu = gpu_precision(args.steps)

    rows = [
        ("bare loop, 1 process", f"{bare * 1000:.0f} ms/step", f"{8 / bare:.1f}", ""),
        ("Ray Train, 1 worker", f"{one_step_s * 1000:.0f} ms/step", f"{one['samples_per_s']:.1f}", f"overhead {one_step_s / bare:.2f}x (target <= 1.05x)"),
        ("Ray Train, 2 workers", f"{two['train_time_s'] / two['steps'] * 1000:.0f} ms/step", f"{two['samples_per_s']:.1f}", f"weak scaling {two['samples_per_s'] / one['samples_per_s']:.2f}x (target >= 1.8x)"),
    ]  # fmt: skip
    load = os.getloadavg()[0]
    table = [
        "| run | step time | samples/s | note |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        f"| start-up | {startup:.1f} s from `python launch.py` to step 1 | | target <= 20 s |",
    ]
    if gpu is None:
        table.append("| GPU fp32 vs bf16 + channels_last | not measured: no GPU | | target >= 2x |")
    else:
        table.append(
            f"| GPU fp32 vs bf16 + channels_last | | {gpu[0]:.0f} / {gpu[1]:.0f} | {gpu[1] / gpu[0]:.2f}x |"
        )
    text = "\n".join(table)
    print(text)
    if args.no_write:
        return
    body = (
        "SRResNet stage of the demo model (4 blocks x 32 ch, x4, 64 px HR crops, batch 8 per worker, "
        f"DALI on CPU, 1 torch thread per worker), {args.steps} timed steps; step time from the "
        "checkpointed `train_time_s` (excludes start-up).\n\n"
        f"- command: `.venv/bin/python bench/train_scaling.py --steps {args.steps}`\n"
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{'no GPU' if gpu is None else 'GPU'}; 1-min load average at the end {load:.1f}\n"
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n\n" + text
    )
    write_section("Training: Ray overhead, weak scaling, start-up", body)


if __name__ == "__main__":
    main()
