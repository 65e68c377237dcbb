"""GPU benchmark: training steps, the loader, fidelity and upscaling on one CUDA GPU, one command.

    .venv/bin/python bench/gpu_train.py              # ~3 min on one H100; writes "## GPU" in BENCHMARKS.md
    .venv/bin/python bench/gpu_train.py --ray        # also a 1-worker Ray run of both stages (~+2 min)
    .venv/bin/python bench/gpu_train.py --seconds 1 --no-write   # quick look, prints only

Everything runs on ``cuda:0`` with no network (VGG19 has random weights: speed does not depend on
the weights' values). Exit status 1 with a message when torch sees no CUDA GPU.

1. SRResNet step (16 blocks x 64 ch, x4, 96 px HR, MSE, ``make_adam``'s fused Adam): samples/s at
   batch 16 and 64, fp32 with TF32 vs bf16 autocast + channels_last. Target: bf16 + channels_last
   >= 2x fp32 at batch 64.
2. SRGAN step (G + D + VGG54 perceptual + adversarial, both updates), same grid.
3. Loader: samples/s of DALI ``mixed`` on prepared JPEG tiles vs the PIL DataLoader at equal
   threads (batch 16, 96 px, x4), next to what the training step consumes. Target: DALI >= 2x
   the fastest SRResNet step at batch 16.
4. Fidelity: LR from DALI ``mixed`` vs PIL bicubic of the same HR crop (grey levels, real
   photos), and ``mixed`` vs PIL decoding of a 4:2:0 JPEG with and without
   ``jpeg_fancy_upsampling``.
5. ``upscale``: the same image upscaled on CUDA and on the CPU; max difference and output MP/s.
6. ``--ray`` only: ``launch.py`` with configs/div2k_x4.yaml (paper model) on 1 worker, both stages
   for a few hundred steps, vs the same ``StageTrainer`` run in this process without Ray (same
   config: EMA, scheduler, log windows, DALI ``mixed``); each side's steady-state samples/s is the
   median of its logged windows after the first (warm-up). Target Ray / bare >= 0.95x.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from _report import write_section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "GPU: training step, loader, fidelity, upscaling"
BATCHES = (16, 64)
PRECISIONS = ("fp32", "bf16+CL")
TARGET_BF16_SPEEDUP = 2.0
TARGET_LOADER_OVER_STEP = 2.0
TARGET_RAY_OVER_BARE = 0.95


# --------------------------------------------------------------------------- report (CPU-only logic


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def verdict(value: float | None, target: float) -> str:
    """``"2.31x (target >= 2x: met)"``; ``"n/a"`` when not measured."""
    if value is None:
        return "n/a"
    return f"{value:.2f}x (target >= {target:g}x: {'met' if value >= target else 'MISSED'})"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def step_rate(results: dict, model: str, batch: int, precision: str) -> float | None:
    for row in results["steps"]:
        if (row["model"], row["batch"], row["precision"]) == (model, batch, precision):
            return row["samples_per_s"]
    return None


def report(results: dict) -> str:
    """The BENCHMARKS.md text (without the section title) for one run's ``results``."""
    steps_rows = []
    for model in ("srresnet", "srgan"):
        for batch in BATCHES:
            fp32, bf16 = (step_rate(results, model, batch, p) for p in PRECISIONS)
            target = TARGET_BF16_SPEEDUP if (model, batch) == ("srresnet", 64) else None
            speedup = ratio(bf16, fp32)
            steps_rows.append([
                model, str(batch), _num(fp32), _num(bf16),
                verdict(speedup, target) if target else (f"{speedup:.2f}x" if speedup else "n/a"),
            ])  # fmt: skip
    loader = results["loader"]
    consumption = step_rate(results, "srresnet", 16, "bf16+CL")
    srgan_consumption = step_rate(results, "srgan", 16, "bf16+CL")
    loader_rows = [
        ["DALI mixed", _num(loader["dali_mixed"]), verdict(ratio(loader["dali_mixed"], consumption), TARGET_LOADER_OVER_STEP), _ratio(ratio(loader["dali_mixed"], srgan_consumption))],
        ["PIL DataLoader", _num(loader["pil"]), _ratio(ratio(loader["pil"], consumption)), _ratio(ratio(loader["pil"], srgan_consumption))],
    ]  # fmt: skip
    fidelity = results["fidelity"]
    fidelity_rows = [
        ["DALI mixed LR vs PIL bicubic of the same HR crop", f"{fidelity['lr_mean']:.3f}", f"{fidelity['lr_max']:.0f}"],
        ["mixed vs PIL decode, 4:2:0 JPEG, jpeg_fancy_upsampling=True", f"{fidelity['decode_fancy_mean']:.3f}", f"{fidelity['decode_fancy_max']:.0f}"],
        ["mixed vs PIL decode, 4:2:0 JPEG, jpeg_fancy_upsampling=False", f"{fidelity['decode_plain_mean']:.3f}", f"{fidelity['decode_plain_max']:.0f}"],
    ]  # fmt: skip
    upscale = results["upscale"]
    parts = [
        f"- command: `{results['command']}`",
        f"- machine: {results['machine']}",
        f"- versions: {results['versions']}",
        f"- date: {results['date']}; took {results['took_s']:.0f} s",
        "",
        "Training steps, samples/s (x4, 96 px HR crops; SRResNet and G: 16 blocks x 64 ch, BN; "
        "fused Adam; cudnn.benchmark on). fp32 = TF32 matmuls and convolutions; bf16+CL = bf16 "
        "autocast + channels_last for every model:",
        "",
        markdown_table(["step", "batch", "fp32", "bf16+CL", "bf16+CL / fp32"], steps_rows),
        "",
        f"Loader, samples/s (batch 16, {loader['threads']} threads each: DALI `num_threads`, PIL "
        f"DataLoader workers; {loader['tiles']} prepared 480 px JPEG q95 tiles of real photos), "
        f"against the bf16+CL step at batch 16 (SRResNet {_num(consumption)}, SRGAN "
        f"{_num(srgan_consumption)} samples/s):",
        "",
        markdown_table(["loader", "samples/s", "/ SRResNet step", "/ SRGAN step"], loader_rows),
        "",
        "Fidelity (grey levels, 0-255):",
        "",
        markdown_table(["comparison", "mean abs diff", "max abs diff"], fidelity_rows),
        "",
        f"`upscale` ({upscale['output']} output, default tiling, paper-size generator): CUDA "
        f"{upscale['gpu_mp_s']:.2f} MP/s, CPU ({upscale['cpu_threads']} threads) "
        f"{upscale['cpu_mp_s']:.3f} MP/s ({_ratio(ratio(upscale['gpu_mp_s'], upscale['cpu_mp_s']))}); "
        f"max |CUDA - CPU| {upscale['max_diff']:.3f} grey levels before rounding, "
        f"{upscale['max_diff_u8']:.0f} after (TF32 convolutions on the GPU, torch's default).",
    ]
    ray = results.get("ray")
    if ray is None:
        parts += ["", "Ray Train 1 worker: not run (pass `--ray`)."]
    else:
        parts += [
            "",
            "Ray Train, 1 worker (launch.py, configs/div2k_x4.yaml, EMA on) vs the same StageTrainer "
            "in one process without Ray, steady state (median of the logged windows after the first), "
            f"samples/s: SRResNet {_num(ray['srresnet']['ray'])} vs {_num(ray['srresnet']['bare'])}, "
            f"Ray / bare {verdict(ray['srresnet']['ratio'], TARGET_RAY_OVER_BARE)}; SRGAN "
            f"{_num(ray['srgan']['ray'])} vs {_num(ray['srgan']['bare'])}, Ray / bare "
            f"{verdict(ray['srgan']['ratio'], TARGET_RAY_OVER_BARE)}.",
        ]
    return "\n".join(parts)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


# --------------------------------------------------------------------------- measurements (GPU)


class Sizes(NamedTuple):
    """The models and batches a measurement runs: the paper's on a GPU, tiny ones for the CPU
    mode of ``bench/gpu_check.py`` (the same code, seconds on 2 cores)."""

    num_blocks: int = 16
    channels: int = 64
    disc_channels: int = 64
    hr: int = 96
    vgg_layer: str = "54"
    batches: tuple[int, ...] = BATCHES
    min_steps: int = 10
    """The fewest timed steps per measurement."""


PAPER = Sizes()
TINY = Sizes(num_blocks=1, channels=8, disc_channels=8, hr=32, vgg_layer="22", batches=(2, 4), min_steps=1)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rate(
    step: Callable[[], object], samples_per_step: int, seconds: float, device=None, min_count: int = 10
) -> float:
    """Samples/s of ``step``: warm up, size the run from a synced estimate, time it."""
    import torch

    device = device or torch.device("cuda", 0)
    warm = min(3, min_count)
    for _ in range(warm):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(warm):
        step()
    synchronize(device)
    count = max(min_count, int(seconds / ((time.perf_counter() - start) / warm)))
    start = time.perf_counter()
    for _ in range(count):
        step()
    synchronize(device)
    return count * samples_per_step / (time.perf_counter() - start)


def measure_step(
    model: str, batch: int, precision: str, seconds: float, device=None, sizes: Sizes = PAPER
) -> float:
    """Samples/s of ``srresnet_step`` or ``srgan_step`` on synthetic batches (data excluded)."""
    import torch

    from srgan_dist.config import LossConfig
    from srgan_dist.losses import PerceptualLoss
    from srgan_dist.models import Discriminator, Generator, VGGFeatures
    from srgan_dist.train.steps import StepContext, StepModels, make_adam, srgan_step, srresnet_step
    from srgan_dist.vgg_weights import load_vgg19_features

    device = device or torch.device("cuda", 0)
    bf16 = precision == "bf16+CL"
    memory = torch.channels_last if bf16 else torch.contiguous_format
    torch.manual_seed(0)
    generator = Generator(num_blocks=sizes.num_blocks, channels=sizes.channels, scale=4, norm="batch")
    generator = generator.to(device, memory_format=memory)
    ctx = StepContext(
        loss=LossConfig(),
        autocast=(lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if bf16
        else contextlib.nullcontext,
    )
    lr = torch.rand(batch, 3, sizes.hr // 4, sizes.hr // 4, device=device).contiguous(memory_format=memory)
    hr = (torch.rand(batch, 3, sizes.hr, sizes.hr, device=device) * 2 - 1).contiguous(memory_format=memory)
    opt_g = make_adam(generator.parameters(), 1e-4, device)
    flags = []
    if model == "srresnet":

        def step():
            flags.append(
                srresnet_step(StepModels(generator=generator, optimizer_g=opt_g), lr, hr, ctx)["finite"]
            )

    else:
        discriminator = Discriminator(channels=sizes.disc_channels).to(device, memory_format=memory)
        vgg = VGGFeatures(sizes.vgg_layer, load_vgg19_features("random")).to(device)
        vgg.for_steps(channels_last=bf16, weight_dtype=torch.bfloat16 if bf16 else None)  # as the trainer
        perceptual = PerceptualLoss(vgg)
        opt_d = make_adam(discriminator.parameters(), 1e-4, device)

        def step():
            values = srgan_step(
                StepModels(
                    generator=generator,
                    optimizer_g=opt_g,
                    discriminator=discriminator,
                    optimizer_d=opt_d,
                    perceptual=perceptual,
                ),
                lr,
                hr,
                ctx,
            )
            flags.append(values["finite"])

    rate = timed_rate(step, batch, seconds, device, sizes.min_steps)
    if not bool(torch.stack(flags).all()):  # one read at the end, as the loop does per window
        raise SystemExit(f"{model} batch {batch} {precision}: a step had non-finite gradients")
    return rate


def make_tiles(work: Path, threads: int) -> list[str]:
    """Prepared 480 px JPEG q95 tiles of DIV2K-sized mosaics of the sample photos."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from data_throughput import make_2k_photos

    from srgan_dist.config import DataConfig
    from srgan_dist.data import scan_images
    from srgan_dist.data.prepare import prepare_subimages

    make_2k_photos(work / "raw", 4)
    cfg = DataConfig(on_bad_file="error", num_threads=threads)
    prepare_subimages(
        str(work / "raw"), work / "tiles", fmt="jpeg", workers=threads, data_cfg=cfg, progress=False
    )
    return scan_images(
        str(work / "tiles"), role="bench", min_side=96, data_cfg=cfg, cache_dir=work / "cache"
    ).files


def measure_loaders(tiles: list[str], threads: int, seconds: float) -> dict:
    """Best of two windows per loader, alternating, so a burst of other load decides nothing."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from data_throughput import measure

    loaders = {"dali_mixed": ("dali", torch.device("cuda", 0)), "pil": ("pil", torch.device("cuda", 0))}
    rates = dict.fromkeys(loaders, 0.0)
    for order in (list(loaders), list(loaders)[::-1]):
        for name in order:
            kind, device = loaders[name]
            rates[name] = max(rates[name], measure(tiles, kind, device, threads, seconds)[0])
    return {**rates, "threads": threads, "tiles": len(tiles)}


def measure_fidelity(tiles: list[str], work: Path, device=None) -> dict:
    """Grey-level differences: the DALI loader's LR vs PIL bicubic of its own HR crop, and DALI's
    decode of a 4:2:0 JPEG vs PIL's (``mixed`` on a GPU, the CPU decoder with ``device`` cpu)."""
    import numpy as np
    import torch
    from PIL import Image

    from srgan_dist.data import build_train_loader, load_rgb
    from srgan_dist.data.resize import bicubic_downscale

    device = device or torch.device("cuda", 0)
    loader = build_train_loader(
        tiles, loader="dali", scale=4, hr_patch_size=96, batch_size=16, rank=0, world_size=1,
        device=device, seed=0, num_threads=4,
    )  # fmt: skip
    diffs = []
    for _ in range(4):
        lr, hr = next(loader)
        hr_u8 = ((hr.float().cpu().permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().astype(np.uint8)
        lr_u8 = (lr.float().cpu().permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.int64)
        diffs += [
            np.abs(bicubic_downscale(h, 4).astype(np.int64) - low)
            for h, low in zip(hr_u8, lr_u8, strict=True)
        ]
    loader.close()
    lr_diff = np.stack(diffs)

    photo = load_rgb(str(Path(tiles[0])))
    path = work / "photo_420.jpg"
    Image.fromarray(photo).save(path, quality=90, subsampling=2)
    with Image.open(path) as image:
        pil = np.asarray(image.convert("RGB")).astype(np.int64)
    fancy = np.abs(_dali_decode(str(path), fancy=True, device=device) - pil)
    plain = np.abs(_dali_decode(str(path), fancy=False, device=device) - pil)
    return {
        "lr_mean": float(lr_diff.mean()), "lr_max": float(lr_diff.max()),
        "decode_fancy_mean": float(fancy.mean()), "decode_fancy_max": float(fancy.max()),
        "decode_plain_mean": float(plain.mean()), "decode_plain_max": float(plain.max()),
    }  # fmt: skip


def _dali_decode(path: str, *, fancy: bool, device):
    import numpy as np
    from nvidia.dali import fn, pipeline_def

    from srgan_dist.data.dali_pipeline import decoder_kwargs

    on_gpu = device.type == "cuda"
    decode_device = "mixed" if on_gpu else "cpu"

    @pipeline_def(batch_size=1, num_threads=1, device_id=(device.index or 0) if on_gpu else None)
    def decode():
        encoded, _ = fn.readers.file(files=[path])
        return fn.decoders.image(encoded, **{**decoder_kwargs(decode_device), "jpeg_fancy_upsampling": fancy})

    pipe = decode()
    pipe.build()
    (out,) = pipe.run()
    out = out.as_cpu() if on_gpu else out
    return np.array(out[0]).astype(np.int64)


def measure_upscale(tiles: list[str], repeats: int = 3) -> dict:
    import numpy as np
    import torch

    from srgan_dist.data import load_rgb
    from srgan_dist.infer import DEFAULT_TILING, upscale_rgb
    from srgan_dist.models import Generator
    from srgan_dist.pixels import quantize

    torch.manual_seed(0)
    model = Generator(num_blocks=16, channels=64, scale=4, norm="batch").eval()
    image = load_rgb(tiles[0])[:256, :256].astype(np.float32) / 255.0  # → 1024 x 1024 output
    megapixels = image.shape[0] * image.shape[1] * 16 / 1e6
    start = time.perf_counter()
    cpu = upscale_rgb(model, image, DEFAULT_TILING, "cpu")
    cpu_s = time.perf_counter() - start
    model.cuda()
    upscale_rgb(model, image, DEFAULT_TILING, "cuda")  # warm-up
    gpu_s = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        gpu = upscale_rgb(model, image, DEFAULT_TILING, "cuda")  # returns a host array: synced
        gpu_s = min(gpu_s, time.perf_counter() - start)
    return {
        "output": f"{image.shape[1] * 4}x{image.shape[0] * 4}",
        "cpu_threads": torch.get_num_threads(),
        "cpu_mp_s": megapixels / cpu_s,
        "gpu_mp_s": megapixels / gpu_s,
        "max_diff": float(np.abs(gpu - cpu).max() * 255),
        "max_diff_u8": float(np.abs(quantize(gpu, 8).astype(np.int64) - quantize(cpu, 8)).max()),
    }


def mini_run_overrides(tile_dir: str, steps: int, window: int) -> list[str]:
    """Both stages for ``steps`` steps, logging every ``window`` steps, one checkpoint at the end,
    no validation; random VGG (no download)."""
    overrides = [f"data.train={tile_dir}", "data.val=", "loss.vgg_weights=random", "scaling.num_workers=1"]
    for stage in ("srresnet", "srgan"):
        overrides += [
            f"{stage}.iterations={steps}", f"{stage}.log_interval={window}",
            f"{stage}.checkpoint_interval={steps}", f"{stage}.val_interval={steps}",
        ]  # fmt: skip
    return overrides


def stage_windows(event_dir: Path) -> dict[str, list[float]]:
    """Every logged window's scalars of one stage's TensorBoard folder, by tag, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def steady_rate(windows: dict[str, list[float]]) -> float:
    """Median samples/s of the windows after the first (the first holds the warm-up: CUDA and
    cuDNN autotuning, the first fused Adam's imports, DALI's first batches)."""
    import statistics

    rates = windows["perf/samples_per_s"]
    if len(rates) < 2:
        raise SystemExit(f"need at least 2 logged windows for a steady-state rate, got {len(rates)}")
    return statistics.median(rates[1:])


def stage_results(run_root: Path) -> dict[str, dict]:
    """Per stage of a finished run: its steady rate, windows, peak GPU memory and skipped steps."""
    results = {}
    for stage in ("srresnet", "srgan"):
        windows = stage_windows(run_root / "tensorboard" / stage)
        results[stage] = {
            "steady_samples_per_s": steady_rate(windows),
            "window_samples_per_s": windows["perf/samples_per_s"],
            "peak_memory_mib": max(windows.get("perf/gpu_max_memory_mib", [0.0])),
            "nonfinite_skips": int(windows["train/nonfinite_skips"][-1]),
        }
    return results


def ray_run(config: Path, overrides: list[str], work: Path, env: dict[str, str] | None = None) -> dict:
    """``launch.py`` (embedded Ray, 1 Ray Train worker) with ``config`` and ``overrides``; the
    stages' steady rates and memory from its TensorBoard windows."""
    command = [
        sys.executable, str(ROOT / "launch.py"), "--config", str(config), "--name", "mini",
        "--storage", str(work / "ray"), "--workers", "1", *overrides,
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if completed.returncode != 0:
        sys.stdout.write(completed.stdout[-4000:] + completed.stderr[-4000:])
        raise SystemExit("the launch.py run failed (its output is above)")
    return stage_results(work / "ray" / "mini")


def bare_run(config: Path, overrides: list[str], work: Path, device) -> dict:
    """The same stages through the same ``StageTrainer`` (EMA, scheduler, windows, checkpoints) in
    this process, without Ray: what Ray Train's share of the step rate is measured against."""
    import torch

    from srgan_dist.config import load_config, resolve_paths
    from srgan_dist.data import scan_images
    from srgan_dist.rundir import RunDir
    from srgan_dist.train.trainer import StageTrainer

    threads = torch.get_num_threads()
    cfg = resolve_paths(load_config(config, [*overrides, f"run.storage={work / 'bare'}", "run.name=mini"]))
    files = scan_images(
        cfg.data.train, role="train", min_side=96, data_cfg=cfg.data, cache_dir=work / "cache"
    ).files
    run_dir = RunDir.of(cfg.run.storage, cfg.run.name)
    try:
        for stage in cfg.train.stages:
            trainer = StageTrainer(
                cfg, stage, rank=0, world_size=1, device=device, run_dir=run_dir, train_files=files,
                val_files=[], report=lambda metrics, directory, name: None,
            )  # fmt: skip
            trainer.resume(None)
            trainer.run()
    finally:
        torch.set_num_threads(threads)  # StageTrainer sets scaling.cpus_per_worker
    return stage_results(run_dir.root)


def ray_vs_bare(ray: dict, bare: dict) -> dict:
    """Steady-state samples/s per stage, through Ray Train and bare, and their ratio."""
    return {
        stage: {
            "ray": ray[stage]["steady_samples_per_s"],
            "bare": bare[stage]["steady_samples_per_s"],
            "ratio": ratio(ray[stage]["steady_samples_per_s"], bare[stage]["steady_samples_per_s"]),
        }
        for stage in ("srresnet", "srgan")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="timing window per measurement (default 4)"
    )
    parser.add_argument(
        "--threads", type=int, default=min(8, os.cpu_count() or 1),
        help="loader threads, the same for DALI and PIL (default min(8, CPU cores))",
    )  # fmt: skip
    parser.add_argument("--ray", action="store_true", help="also run launch.py on 1 Ray worker (both stages)")
    parser.add_argument(
        "--ray-steps", type=int, default=200, help="steps per stage with --ray, 4 log windows (default 200)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            f"bench/gpu_train.py needs a CUDA GPU: torch {torch.__version__} (CUDA {torch.version.cuda}) "
            "sees none. On a CPU machine run bench/data_throughput.py, bench/train_scaling.py and "
            "bench/upscale_throughput.py instead.",
            file=sys.stderr,
        )
        return 1
    from srgan_dist.data.train_loader import dali_available

    if not dali_available():
        print("bench/gpu_train.py needs NVIDIA DALI (pip install nvidia-dali-cuda130)", file=sys.stderr)
        return 1

    started = time.perf_counter()
    torch.backends.cudnn.benchmark = True  # fixed shapes, as in training
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    results: dict = {"steps": []}
    for model in ("srresnet", "srgan"):
        for batch in BATCHES:
            for precision in PRECISIONS:
                rate = measure_step(model, batch, precision, args.seconds)
                results["steps"].append(
                    {"model": model, "batch": batch, "precision": precision, "samples_per_s": rate}
                )
                print(f"{model:8s} batch {batch:3d} {precision:8s} {rate:9.1f} samples/s", flush=True)
                torch.cuda.empty_cache()

    with tempfile.TemporaryDirectory(prefix="srgan-gpu-bench-") as tmp:
        work = Path(tmp)
        tiles = make_tiles(work, args.threads)
        results["loader"] = measure_loaders(tiles, args.threads, args.seconds)
        print(f"loaders: {results['loader']}", flush=True)
        results["fidelity"] = measure_fidelity(tiles, work)
        print(f"fidelity: {results['fidelity']}", flush=True)
        results["upscale"] = measure_upscale(tiles)
        print(f"upscale: {results['upscale']}", flush=True)
        if args.ray:
            config, device = ROOT / "configs" / "div2k_x4.yaml", torch.device("cuda", 0)
            overrides = mini_run_overrides(str(Path(tiles[0]).parent), args.ray_steps, args.ray_steps // 4)
            results["ray"] = ray_vs_bare(
                ray_run(config, overrides, work), bare_run(config, overrides, work, device)
            )
            print(f"ray: {results['ray']}", flush=True)

    import nvidia.dali

    results["command"] = "python bench/gpu_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results["machine"] = f"{torch.cuda.get_device_name(0)}, {platform.machine()}, {os.cpu_count()} CPU cores"
    results["versions"] = f"torch {torch.__version__}, DALI {nvidia.dali.__version__}"
    results["date"] = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    results["took_s"] = time.perf_counter() - started
    text = report(results)
    print("\n" + text)
    if not args.no_write:
        path = write_section(SECTION, text)
        print(f"\nwrote the '{SECTION}' section of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
