"""The GPU acceptance run: every GPU-only path of the project, one PASS/FAIL line per check.

    .venv/bin/python bench/gpu_check.py --json gpu_check.json        # one CUDA GPU (make gpu-check)
    .venv/bin/python bench/gpu_check.py --cpu --json /tmp/check.json  # the same checks on CPU (make gpu-check-cpu)

On a GPU (target: under 8 minutes on one H100) it runs the real thing. ``--cpu`` runs the same
code paths with tiny models and data and CPU stand-ins where only CUDA can do the work (named in
each line), in well under a minute on 2 cores; ``make test`` runs it (tests/test_gpu_check.py),
so an import or signature change in GPU-only code fails CI the day it happens.

Checks, in order (a line each: ``PASS|FAIL <check>: <numbers>``; every number also in ``--json``):
1. ``pytest-gpu``: ``pytest -m gpu`` (CPU: the GPU tests are collected, none run).
2. ``steps``: SRResNet and SRGAN step rates, fp32 vs bf16 + channels_last at batch 16 and 64
   (``bench/gpu_train.py``); GPU target: bf16+CL >= 2x fp32 for SRResNet at batch 64.
3. ``loader``: the DALI loader alone (``mixed``; CPU: the CPU pipeline) vs what the bf16+CL
   SRResNet step consumes at batch 16; GPU target >= 2x.
4. ``mini-run``: both stages through ``launch.py`` (Ray Train, 1 worker): steady-state steps
   under ``torch.cuda.set_sync_debug_mode("error")`` (the fault plan's ``sync_debug``; CUDA only),
   a NaN target injected mid-stage that fused Adam must skip without a sync, peak GPU memory per
   stage (CPU: the same ``StageTrainer`` stages in this process, without Ray, whose start-up the
   test suite's Ray runs cover).
5. ``ray-vs-bare``: the mini run's steady-state samples/s vs the same ``StageTrainer`` without Ray;
   GPU target >= 0.95x.
6. ``fidelity``: the loader's LR vs PIL bicubic of its HR crop (mean <= 0.5, max <= 16 grey
   levels: Keys cubic vs PIL at strong edges), DALI vs PIL decode of a 4:2:0 JPEG with
   ``jpeg_fancy_upsampling`` (mean <= 0.5, max <= 8).
7. ``buffer-lifetime``: a few hundred batches of a DALI pipeline with a one-batch prefetch queue,
   consumed as the trainer does (the torch tensors queued on the device, nothing read back) match,
   checksum for checksum, the same batches read back one by one.
8. ``cross-layout-resume``: tests/test_trainer.py's resume in the other memory layout (GPU: its
   ``gpu`` variant; CPU: the CPU one).
9. ``all-reduce``: a 1-rank NCCL (CPU: gloo) all-reduce of D's gradient size (``doctor``'s timing).
10. ``doctor-gpu``: ``srgan-dist doctor``'s GPU probe (CUDA matmul, DALI ``mixed`` decode + resize;
    CPU: the DALI CPU decode + resize).

Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gpu_train

ROOT = Path(__file__).resolve().parent.parent


class Check:
    """Runs the checks, prints a line per check as it ends, keeps every number."""

    def __init__(self) -> None:
        self.numbers: dict[str, dict] = {}
        self.failed: list[str] = []

    def run(self, name: str, check: Callable[[], tuple[bool, str, dict]]) -> None:
        started = time.perf_counter()
        try:
            passed, text, numbers = check()
        except (Exception, SystemExit) as error:  # a check that crashes is that check's FAIL line
            passed, text, numbers = False, f"{type(error).__name__}: {error}", {}
        numbers = {**numbers, "seconds": time.perf_counter() - started}
        self.numbers[name] = {"passed": passed, **numbers}
        if not passed:
            self.failed.append(name)
        print(f"{'PASS' if passed else 'FAIL'} {name}: {text} ({numbers['seconds']:.1f} s)", flush=True)


def pytest_gpu(cpu: bool) -> tuple[bool, str, dict]:
    files = sorted(str(p) for p in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in p.read_text())
    args = ["-m", "gpu", "-q", "-p", "no:cacheprovider", *(["--collect-only"] if cpu else []), *files]
    done = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=ROOT, capture_output=True, text=True)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    counts = {key: int(value) for value, key in re.findall(r"(\d+) (passed|failed|skipped|error)", tail)}
    if cpu:
        collected = re.search(r"(\d+)/\d+ tests collected", tail)
        counts["collected"] = int(collected.group(1)) if collected else 0
        return done.returncode == 0 and counts["collected"] > 0, f"CPU: collected only, {tail}", counts
    return done.returncode == 0 and counts.get("passed", 0) > 0, tail, counts


def steps(device, sizes: gpu_train.Sizes, seconds: float) -> tuple[bool, str, dict]:
    rates = {}
    for model in ("srresnet", "srgan"):
        for batch in sizes.batches:
            for precision in gpu_train.PRECISIONS:
                rate = gpu_train.measure_step(model, batch, precision, seconds, device, sizes)
                rates[f"{model}/{batch}/{precision}"] = rate
    big = sizes.batches[-1]
    speedup = rates[f"srresnet/{big}/bf16+CL"] / rates[f"srresnet/{big}/fp32"]
    text = ", ".join(f"{key} {value:.1f}" for key, value in rates.items()) + " samples/s"
    if device.type == "cuda":
        return speedup >= gpu_train.TARGET_BF16_SPEEDUP, f"{text}; {gpu_train.verdict(speedup, 2.0)}", rates
    return True, f"{text} (CPU: bf16 autocast on CPU, no target)", {**rates, "speedup": speedup}


def loader(device, tiles: list[str], consumption: float, seconds: float) -> tuple[bool, str, dict]:
    from data_throughput import measure

    rate = measure(tiles, "dali", device, 4 if device.type == "cuda" else 1, seconds)[0]
    over = rate / consumption
    numbers = {"dali_samples_per_s": rate, "step_samples_per_s": consumption, "ratio": over}
    text = f"DALI alone {rate:.1f} samples/s, the bf16+CL SRResNet step consumes {consumption:.1f}"
    if device.type == "cuda":
        return over >= gpu_train.TARGET_LOADER_OVER_STEP, f"{text}: {gpu_train.verdict(over, 2.0)}", numbers
    return True, f"{text}: {over:.2f}x (CPU: no target)", numbers


def mini_run(config: Path, overrides: list[str], work: Path, plan: dict, cpu: bool) -> tuple[bool, str, dict]:
    plan_file = work / "fault_plan.json"
    plan_file.write_text(json.dumps(plan))
    import torch

    from srgan_dist.train.faults import PLAN_ENV

    overrides = [*overrides, "train.on_nonfinite=skip", "train.max_failures=0"]
    if cpu:  # the same StageTrainer steps in this process: Ray's start-up is other tests' concern
        os.environ[PLAN_ENV] = str(plan_file)
        try:
            results = gpu_train.bare_run(config, overrides, work / "mini", torch.device("cpu"))
        finally:
            del os.environ[PLAN_ENV]
    else:
        results = gpu_train.ray_run(config, overrides, work, env={PLAN_ENV: str(plan_file)})
    skips = {stage: results[stage]["nonfinite_skips"] for stage in results}
    peaks = {stage: results[stage]["peak_memory_mib"] for stage in results}
    passed = skips == {"srresnet": 1, "srgan": 0} and (cpu or all(peak > 0 for peak in peaks.values()))
    guard = (
        "CPU: in this process without Ray; sync debug mode is CUDA-only, not active"
        if cpu
        else "no host sync"
    )
    text = (
        f"both stages finished; steps from {plan['sync_debug']['from_step']} under sync debug mode "
        f"'error' ({guard}); NaN at srresnet step {plan['nan']['step']} skipped {skips}; peak GPU "
        f"memory MiB {peaks}"
    )
    return passed, text, {"stages": results}


def ray_vs_bare(ray: dict, bare: dict, cpu: bool) -> tuple[bool, str, dict]:
    both = gpu_train.ray_vs_bare(ray, bare)
    text = "; ".join(
        f"{stage} Ray {v['ray']:.1f} vs bare {v['bare']:.1f} samples/s ({v['ratio']:.2f}x)"
        for stage, v in both.items()
    )
    if cpu:
        return (
            True,
            f"{text} (CPU: the mini run was in this process too, so no Ray share; tiny steps, no target)",
            both,
        )
    passed = all(v["ratio"] >= gpu_train.TARGET_RAY_OVER_BARE for v in both.values())
    return passed, f"{text}; target >= {gpu_train.TARGET_RAY_OVER_BARE}x", both


def fidelity(tiles: list[str], work: Path, device) -> tuple[bool, str, dict]:
    found = gpu_train.measure_fidelity(tiles, work, device)
    passed = (
        found["lr_mean"] <= 0.5
        and found["lr_max"] <= 16
        and found["decode_fancy_mean"] <= 0.5
        and found["decode_fancy_max"] <= 8
    )
    text = (
        f"LR vs PIL bicubic mean {found['lr_mean']:.3f} max {found['lr_max']:.0f} (<= 0.5 / 16); 4:2:0 "
        f"decode vs PIL mean {found['decode_fancy_mean']:.3f} max {found['decode_fancy_max']:.0f} (<= 0.5 / 8; "
        f"without fancy upsampling {found['decode_plain_mean']:.3f} / {found['decode_plain_max']:.0f})"
    )
    return passed, text, found


def buffer_lifetime(tiles: list[str], device, batches: int, busy: int) -> tuple[bool, str, dict]:
    """The same seeded pipeline twice: read back batch by batch, then consumed as the trainer
    consumes it (each batch's DALI output dropped right after its copy is queued, device work
    queued behind it, nothing read back until the end)."""
    import torch
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    from srgan_dist.data.dali_pipeline import sr_train_pipeline
    from srgan_dist.data.objects import DaliFiles

    on_gpu = device.type == "cuda"

    def batches_of(consume: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        inputs = DaliFiles(tiles, cache_dir="", num_threads=1)
        paths = (inputs.batch([tiles[(i * 2 + j) % len(tiles)] for j in range(2)]) for i in range(10**9))
        pipe = sr_train_pipeline(
            input_batches=paths, reads_files=True, decode_device="mixed" if on_gpu else "cpu", scale=4, hr_patch_size=96,
            batch_size=2, num_threads=2, device_id=(device.index or 0) if on_gpu else None, seed=7,
            prefetch_queue_depth=1,
        )  # fmt: skip
        pipe.build()
        iterator = DALIGenericIterator([pipe], ["lr", "hr"])
        sums = []
        for _, outputs in zip(range(batches), iterator, strict=False):
            sums.append(consume(outputs[0]["lr"], outputs[0]["hr"]))
            del outputs
        del iterator, pipe
        return sums

    def read_back(lr, hr):
        return torch.stack([lr.double().sum(), hr.double().sum()]).cpu()

    work = torch.rand(busy, busy, device=device)

    def queued(lr, hr):
        for _ in range(4):  # device work behind the copy, so a too-early reuse would show
            torch.mm(work, work)
        return torch.stack([lr.double().sum(), hr.double().sum()])

    reference = batches_of(read_back)
    trainer_like = torch.stack(batches_of(queued)).cpu()
    differ = int((trainer_like != torch.stack(reference)).any(dim=1).sum())
    text = f"{batches} batches, prefetch queue 1: {differ} checksum(s) differ from the read-back ones"
    return differ == 0 and len(reference) == batches, text, {"batches": batches, "differ": differ}


def cross_layout(cpu: bool) -> tuple[bool, str, dict]:
    select = "other_memory_layout and srresnet and not gpu" if cpu else "other_memory_layout_on_a_gpu"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_trainer.py", "-k", select],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    return done.returncode == 0 and "passed" in tail, tail, {}


def all_reduce(device) -> tuple[bool, str, dict]:
    import torch.distributed as dist

    from srgan_dist.config import load_config
    from srgan_dist.doctor import discriminator_gradient_numel, timed_all_reduce

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        store=dist.HashStore(),
        rank=0,
        world_size=1,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        timing = timed_all_reduce(discriminator_gradient_numel(load_config(None, [])), device, rank=0)
    finally:
        dist.destroy_process_group()
    text = (
        f"1-rank {backend} all-reduce of D's gradients ({timing['bytes'] / 1e6:.1f} MB): "
        f"{timing['seconds'] * 1e3:.2f} ms, sum {timing['sum']:g} (expected 1)"
    )
    return timing["sum"] == 1.0, text, timing


def doctor_gpu(device) -> tuple[bool, str, dict]:
    if device.type == "cuda":
        from srgan_dist.doctor import gpu_probe

        status, reason, fix = gpu_probe()
        return status == "PASS", reason + (f" fix: {fix}" if fix else ""), {}
    import io

    import numpy as np
    from PIL import Image

    from srgan_dist.data.dali_pipeline import decode_and_resize

    encoded = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(
        encoded, "JPEG"
    )
    resized = decode_and_resize(encoded.getvalue(), decode_device="cpu", size=32, device_id=None)
    text = f"CPU: no CUDA probe; the DALI CPU decode + resize of a JPEG gives {resized.shape}"
    return resized.shape == (32, 32, 3), text, {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu", action="store_true", help="the CPU mode: tiny sizes, CPU stand-ins")
    parser.add_argument("--json", type=Path, help="write every number to this file")
    args = parser.parse_args(argv)

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("bench/gpu_check.py needs a CUDA GPU (or --cpu for the CPU mode)", file=sys.stderr)
        return 1
    started = time.perf_counter()
    cpu = args.cpu
    device = torch.device("cpu") if cpu else torch.device("cuda", 0)
    sizes = gpu_train.TINY if cpu else gpu_train.PAPER
    seconds = 0.0 if cpu else 2.0
    if not cpu:
        torch.backends.cudnn.benchmark = True
    check = Check()
    check.run("pytest-gpu", lambda: pytest_gpu(cpu))
    check.run("steps", lambda: steps(device, sizes, seconds))
    consumption = check.numbers["steps"].get(f"srresnet/{sizes.batches[0]}/bf16+CL", 0.0)
    with tempfile.TemporaryDirectory(prefix="srgan-gpu-check-") as tmp:
        work = Path(tmp)
        tiles = tiny_tiles(work) if cpu else gpu_train.make_tiles(work, 8)
        check.run("loader", lambda: loader(device, tiles, consumption, seconds))
        if cpu:
            config, steps_per_stage, window = ROOT / "configs" / "demo.yaml", 6, 2
            overrides = [*gpu_train.mini_run_overrides(str(Path(tiles[0]).parent), 6, 2), *TINY_RUN]
        else:
            config, steps_per_stage, window = ROOT / "configs" / "div2k_x4.yaml", 200, 50
            overrides = gpu_train.mini_run_overrides(str(Path(tiles[0]).parent), 200, 50)
        plan = {
            "sync_debug": {"from_step": window + 1},
            "nan": {"stage": "srresnet", "step": steps_per_stage - window // 2},
        }
        check.run("mini-run", lambda: mini_run(config, overrides, work, plan, cpu))
        if check.numbers["mini-run"]["passed"]:
            ray = check.numbers["mini-run"]["stages"]
            check.run(
                "ray-vs-bare",
                lambda: ray_vs_bare(ray, gpu_train.bare_run(config, overrides, work, device), cpu),
            )
        else:
            check.run("ray-vs-bare", lambda: (False, "not run: the mini run failed", {}))
        check.run("fidelity", lambda: fidelity(tiles, work, device))
        check.run(
            "buffer-lifetime", lambda: buffer_lifetime(tiles, device, 60 if cpu else 300, 8 if cpu else 2048)
        )
    check.run("cross-layout-resume", lambda: cross_layout(cpu))
    check.run("all-reduce", lambda: all_reduce(device))
    check.run("doctor-gpu", lambda: doctor_gpu(device))

    took = time.perf_counter() - started
    machine = "CPU" if cpu else torch.cuda.get_device_name(0)
    print(f"gpu-check ({'CPU mode' if cpu else machine}): {len(check.numbers) - len(check.failed)} PASS, "
          f"{len(check.failed)} FAIL in {took:.0f} s")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine, "took_s": took, "checks": check.numbers}, indent=1)
        )
    return 1 if check.failed else 0


# The CPU mode's mini run: demo.yaml's stages on a tiny model (seconds on 2 cores).
TINY_RUN = [
    "model.num_blocks=1", "model.channels=8", "model.disc_channels=8", "data.num_threads=1",
    "srresnet.batch_size=2", "srgan.batch_size=2", "srresnet.hr_patch_size=96", "srgan.hr_patch_size=96",
]  # fmt: skip


def tiny_tiles(work: Path) -> list[str]:
    """A few generated 128 px JPEG photos (the loader crops 96 px)."""
    import numpy as np
    from PIL import Image

    folder = work / "tiles"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for index in range(6):
        coarse = Image.fromarray(rng.integers(0, 256, (18, 18, 3), dtype=np.uint8))
        path = folder / f"tile_{index}.jpg"
        coarse.resize((128, 128), Image.Resampling.BICUBIC).save(path, quality=95)
        paths.append(str(path))
    return paths


if __name__ == "__main__":
    raise SystemExit(main())
