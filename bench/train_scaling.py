"""Training on CPUs: what Ray Train + DDP cost over a bare loop, and how 2 workers scale.

    .venv/bin/python bench/train_scaling.py --write     # ~4 min on 2 idle cores; writes BENCHMARKS.md
    .venv/bin/python bench/train_scaling.py --steps 10 --real-steps 10   # quick look, prints only

Model and batch: the SRResNet stage of configs/demo.yaml (4 blocks x 32 ch, x4, bicubic global
skip, 64 px HR crops, batch 8 per worker), ``make_adam``'s fused Adam, 1 torch thread per process.

1. In memory (what Ray and DDP cost, nothing else): ``N`` batches are decoded once by the real
   DALI loader before anything is timed and cycled; every row runs ``steps.srresnet_step``.
   - bare loop: one process, no Ray;
   - 2 bare loops at once, each pinned to its own core: no Ray, no DDP; what two independent
     workers can get out of this machine at all (the ceiling for the 2-worker rows);
   - Ray Train (the real ``TorchTrainer``, Ray started as ``launch.py`` starts it) with 1 worker,
     2 workers (DDP over gloo, wrapped as the trainer wraps it) and 2 workers pinned one per core.
   While the Ray rows run, a sampler thread reads the CPU seconds of every process Ray started
   (controller, gcs_server, raylet, dashboard and agents, idle workers), of this driver and of
   the whole machine, so each is reported as a share of the machine (cpu-s / (wall x cores)).
   The 2-worker rows also time a gloo all-reduce of the gradient's size after their window.
2. Real data (what a user sees): ``python launch.py`` on 1 and 2 workers with DALI decoding the
   sample PNGs inside the loop, against a bare loop over the same DALI loader; step time from
   the run's ``summary.json`` (``train_time_s``: steps only, no start-up or validation).

Targets: Ray 1 worker <= 1.05x the bare loop's step time; 2 workers >= 1.8x the samples/s of 1.
Under ``taskset -c ...`` everything (Ray included) runs on, and every share is of, those cores:
``taskset -c 0,1`` on a bigger machine mimics 2 idle cores, ``taskset -c 0-2`` gives each worker a
core and Ray's processes a third.
Start-up time is bench/startup.py's business ("Start-up breakdown").
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _report import write_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "Training: Ray overhead and weak scaling"
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
MODEL = ["model.num_blocks=4", "model.channels=32", "model.norm=none"]
BATCH, PATCH, SCALE = 8, 64, 4
TARGET_OVERHEAD = 1.05  # Ray 1 worker step time / bare loop step time, at most
TARGET_SCALING = 1.8  # samples/s of 2 workers / 1 worker, at least
WARMUP_STEPS = 5
SAMPLE_INTERVAL_S = 0.2

# The process groups of the CPU table, in its order. `process_group` sorts processes into them;
# any other Ray actor gets a row of its own ("Ray actor <class>") after these.
WORKERS, CONTROLLER = "training workers", "Train controller"
RAY_GROUPS = (
    CONTROLLER,
    "gcs_server",
    "raylet",
    "dashboard",
    "dashboard agent",
    "runtime env agent",
    "log monitor",
    "autoscaler monitor",
    "idle Ray workers",
    "other Ray processes",
)
ACTOR_PREFIX = "Ray actor "
DRIVER = "benchmark driver (Ray driver + sampler)"
OTHERS = "everything else on the machine"
IDLE, STEAL = "idle", "steal (hypervisor)"


# --------------------------------------------------------------------------- report (CPU-only logic)

READING = """\
How to read it:
- The in-memory rows run the trainer's step (`steps.srresnet_step`, `make_adam`'s fused Adam, DDP
  over gloo wrapped as `StageTrainer` wraps it) on batches the DALI loader decoded before the timed
  window, so what differs between rows is Ray Train and DDP, nothing else. The real-data rows are
  what a `launch.py` run gets, with DALI decoding the sample photos (a whole 512 px PNG for every
  64 px crop) inside the loop, on the same cores as the training.
- *2 bare loops at once* is the machine's own limit: two independent processes with a core each,
  no Ray, no communication. Below 2x the bare loop, the cores slow each other down (shared caches
  and memory bandwidth, the hypervisor, other jobs) and no 2-worker run can beat it here.
- CPU table: each process's CPU seconds during that Ray run's timed window / (window x cores), so
  a column sums to 100 %. *All of Ray's own processes* is what Ray takes away from the workers;
  *everything else on the machine* is CPU no process of this benchmark used (other jobs; near 0 on
  an idle machine). A worker's CPU-s / wall below 1 means it waited: for a core, or for the other
  rank in an all-reduce.
- The last line projects weak scaling with a free core per worker from the workers' CPU time per
  step, which waiting for a core does not inflate. It is what to expect on a machine with a spare
  core per worker (and one for Ray's processes); it is a projection, not a measurement."""


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def verdict(value: float | None, target: float, at_most: bool = False) -> str:
    """``"1.03x (target <= 1.05x: met)"``; ``"n/a"`` when not measured."""
    if value is None:
        return "n/a"
    met = value <= target if at_most else value >= target
    return f"{value:.2f}x (target {'<=' if at_most else '>='} {target:g}x: {'met' if met else 'MISSED'})"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def process_group(cmdline: list[str], name: str) -> str | None:
    """Which row of the CPU table a process Ray started belongs to, or None when its command line
    does not say (a helper process: it belongs where its parent does).

    Ray's worker processes rename themselves after what they run (``ray::TrainController.run``,
    ``ray::RayTrainWorker.<method>``, ``ray::DashboardAgent``, ``ray::IDLE``); before that, and for
    its servers, the executable or script says what it is. Names of ``ray::`` processes come
    first: an unrenamed worker's command line also names the raylet's socket.
    """
    line = " ".join(cmdline) or name
    if line.startswith("ray::"):
        actor = line.removeprefix("ray::").split(".")[0].split()[0]
        return {
            "TrainController": CONTROLLER,
            "RayTrainWorker": WORKERS,
            "DashboardAgent": "dashboard agent",
            "RuntimeEnvAgent": "runtime env agent",
            "IDLE": "idle Ray workers",
        }.get(actor, f"{ACTOR_PREFIX}{actor}")
    if line.startswith("ray-dashboard-"):  # the dashboard's module subprocesses
        return "dashboard"
    executable = Path(cmdline[0]).name if cmdline else name
    if executable in ("gcs_server", "raylet"):
        return executable
    for script, group in (
        ("default_worker.py", "idle Ray workers"),  # a worker not yet renamed
        ("dashboard/dashboard.py", "dashboard"),
        ("dashboard/agent.py", "dashboard agent"),
        ("runtime_env/agent/main.py", "runtime env agent"),
        ("log_monitor.py", "log monitor"),
        ("autoscaler/_private/monitor.py", "autoscaler monitor"),
    ):
        if script in line:
            return group
    return None


Sample = tuple[float, dict[str, tuple[str, float]]]
"""(time.time(), {key: (group, cumulative CPU seconds)}): one reading of every process."""


def cpu_in_window(samples: list[Sample], start: float, end: float) -> dict[str, float]:
    """CPU seconds each group used between ``start`` and ``end`` (wall-clock ``time.time()``).

    Each key's cumulative seconds are interpolated linearly between the readings around
    ``start`` and ``end`` (and held flat outside the first and last reading of that key).
    """
    series: dict[str, tuple[str, list[tuple[float, float]]]] = {}
    for when, readings in samples:
        for key, (group, seconds) in readings.items():
            series.setdefault(key, (group, []))[1].append((when, seconds))

    def at(points: list[tuple[float, float]], moment: float) -> float:
        if moment <= points[0][0]:
            return points[0][1]
        for (t0, v0), (t1, v1) in itertools.pairwise(points):
            if moment <= t1:
                return v0 + (v1 - v0) * (moment - t0) / (t1 - t0) if t1 > t0 else v1
        return points[-1][1]

    used: dict[str, float] = {}
    for group, points in series.values():
        used[group] = used.get(group, 0.0) + at(points, end) - at(points, start)
    return used


def machine_shares(used: dict[str, float], wall_s: float, cores: int) -> dict[str, float]:
    """Each group's share of the machine (cpu-s / (wall x cores)), plus what the rest took.

    ``used`` holds the groups of this benchmark's processes and the machine-wide ``"busy"``,
    ``IDLE`` and ``STEAL`` seconds; ``OTHERS`` is busy time no process of ours accounts for.
    """
    capacity = wall_s * cores
    ours = sum(seconds for group, seconds in used.items() if group not in ("busy", IDLE, STEAL))
    shares = {group: seconds / capacity for group, seconds in used.items() if group != "busy"}
    shares[OTHERS] = max(0.0, used.get("busy", 0.0) - ours) / capacity
    return shares


def one_free_core_projection(one: dict, two: dict) -> float | None:
    """Weak scaling if every worker had a core of its own: 2 workers x (1 worker's CPU seconds per
    step) / (a 2-worker rank's CPU seconds per step, which include DDP's and gloo's work).

    A worker that never waits for a CPU takes as long per step as it computes; what a worker
    cannot get on a shared core shows as wall time above its CPU time, not as CPU time.
    """
    one_cpu = one["worker_cpu_per_step_s"][0]
    two_cpu = max(two["worker_cpu_per_step_s"])
    return ratio(two["workers"] * one_cpu, two_cpu)


def where_the_cores_went(name: str, run: dict, cores: int) -> str:
    """One sentence: how many of the cores a Ray run's workers got, who had the rest, and what
    that made of the step time."""
    cpu = run["cpu"]
    rays_own = sum(v for g, v in cpu.items() if g not in (WORKERS, DRIVER, OTHERS, IDLE, STEAL))
    cpu_ms = " / ".join(f"{v * 1000:.0f}" for v in run["worker_cpu_per_step_s"])
    return (
        f"- {name}: the workers got {cpu.get(WORKERS, 0.0) * cores:.2f} of the {cores} cores; Ray's own "
        f"processes took {rays_own:.0%} of the machine, this driver {cpu.get(DRIVER, 0.0):.0%}, "
        f"other jobs {cpu.get(OTHERS, 0.0):.0%}, {cpu.get(IDLE, 0.0):.0%} stayed idle. A rank needs "
        f"{cpu_ms} ms of CPU per step and a step took {run['step_s'] * 1000:.0f} ms of wall time."
    )


def report(results: dict) -> str:
    """The BENCHMARKS.md section body: how it was run, then the tables, from ``results``."""
    memory, real = results["memory"], results["real"]
    bare, pair = memory["bare"], memory["bare_pair"]
    ray1, ray2, pinned = memory["ray1"], memory["ray2"], memory["ray2_pinned"]

    def ms(step_s: float) -> str:
        return f"{step_s * 1000:.0f} ms"

    def rate(step_s: float, workers: int = 1) -> float:
        return workers * BATCH / step_s

    bare_rate, ray1_rate = rate(bare["step_s"]), rate(ray1["step_s"])
    runs = [
        [
            "in memory", "bare loop, 1 process", ms(bare["step_s"]), f"{bare_rate:.1f}",
            "baseline",
        ],
        [
            "in memory", "2 bare loops at once, pinned one per core (no Ray, no DDP)",
            " / ".join(ms(s) for s in pair["step_s"]), f"{pair['samples_per_s']:.1f}",
            f"{pair['samples_per_s'] / bare_rate:.2f}x the bare loop: the most 2 workers can get here",
        ],
        [
            "in memory", "Ray Train, 1 worker", ms(ray1["step_s"]), f"{ray1_rate:.1f}",
            "overhead " + verdict(ratio(ray1["step_s"], bare["step_s"]), TARGET_OVERHEAD, at_most=True),
        ],
        [
            "in memory", "Ray Train, 2 workers (DDP, gloo)", ms(ray2["step_s"]),
            f"{rate(ray2['step_s'], 2):.1f}",
            "weak scaling " + verdict(ratio(rate(ray2["step_s"], 2), ray1_rate), TARGET_SCALING),
        ],
        [
            "in memory", "Ray Train, 2 workers pinned one per core", ms(pinned["step_s"]),
            f"{rate(pinned['step_s'], 2):.1f}",
            "weak scaling " + verdict(ratio(rate(pinned["step_s"], 2), ray1_rate), TARGET_SCALING),
        ],
        [
            "real (DALI in the loop)", "bare loop + DALI, 1 process", ms(real["bare_step_s"]),
            f"{rate(real['bare_step_s']):.1f}", "baseline",
        ],
        [
            "real (DALI in the loop)", "`launch.py`, 1 worker", ms(real["ray1_step_s"]),
            f"{rate(real['ray1_step_s']):.1f}",
            "overhead "
            + verdict(ratio(real["ray1_step_s"], real["bare_step_s"]), TARGET_OVERHEAD, at_most=True),
        ],
        [
            "real (DALI in the loop)", "`launch.py`, 2 workers", ms(real["ray2_step_s"]),
            f"{rate(real['ray2_step_s'], 2):.1f}",
            "weak scaling "
            + verdict(ratio(rate(real["ray2_step_s"], 2), rate(real["ray1_step_s"])), TARGET_SCALING),
        ],
    ]  # fmt: skip
    runs_table = markdown_table(["data", "run", "step time", "samples/s", "vs target"], runs)

    ray_runs = [ray1, ray2, pinned]
    actors = sorted({g for run in ray_runs for g in run["cpu"] if g.startswith(ACTOR_PREFIX)})
    rays_own = [*RAY_GROUPS, *actors]
    groups = [WORKERS, *(g for g in rays_own if any(run["cpu"].get(g, 0) > 0 for run in ray_runs))]

    def share(run: dict, group: str) -> float:
        return run["cpu"].get(group, 0.0)

    def percent(value: float) -> str:
        return f"{value * 100:.1f} %"

    cpu_rows = [[group, *(percent(share(run, group)) for run in ray_runs)] for group in groups]
    cpu_rows.append(
        [
            "**all of Ray's own processes** (all above but the workers)",
            *(f"**{percent(sum(share(run, g) for g in rays_own))}**" for run in ray_runs),
        ]
    )
    for group in (DRIVER, OTHERS, IDLE, STEAL):
        cpu_rows.append([group, *(percent(share(run, group)) for run in ray_runs)])
    cpu_table = markdown_table(
        ["process (CPU share of the machine in the timed window)", "1 worker", "2 workers", "2 pinned"],
        cpu_rows,
    )

    def per_worker(run: dict, key: str, fmt: Callable[[float], str]) -> str:
        return " / ".join(fmt(value) for value in run[key])

    why_rows = [
        [
            name,
            f"{run['wall_s']:.1f} s",
            per_worker(run, "worker_cpu_per_wall", lambda v: f"{v:.2f}"),
            per_worker(run, "worker_cpu_per_step_s", lambda v: f"{v * 1000:.0f} ms"),
            ms(run["step_s"]),
            "" if run.get("allreduce_ms") is None else f"{run['allreduce_ms']:.2f} ms",
        ]
        for name, run in (("1 worker", ray1), ("2 workers", ray2), ("2 pinned", pinned))
    ]
    why_table = markdown_table(
        [
            "Ray run", "timed window", "each worker's CPU-s / wall", "CPU per step, each worker",
            "wall per step", f"gloo all-reduce of all {ray1['parameters']:,} gradients (one call)",
        ],
        why_rows,
    )  # fmt: skip
    projection = one_free_core_projection(ray1, ray2)
    lines = [
        READING,
        "",
        f"- command: `{results['command']}` (took {results['took_s']:.0f} s)",
        f"- machine: {results['machine']}",
        f"- date: {results['date']}; 1-min load average {results['load_before']:.2f} before, "
        f"{results['load_after']:.2f} after",
        f"- {results['steps']} timed steps per in-memory run after {WARMUP_STEPS} warm-up steps, "
        f"{results['batches']} pre-decoded batches cycled; {results['real_steps']} steps per real-data "
        f"run; torch threads per worker: {ray1['threads']} (Ray Train), 1 (bare loops)",
        "",
        runs_table,
        "",
        cpu_table,
        "",
        why_table,
        "",
        "Where the cores went in each Ray run's timed window:",
        *(
            where_the_cores_went(name, run, results["cores"])
            for name, run in (("1 worker", ray1), ("2 workers", ray2), ("2 pinned", pinned))
        ),
        "",
        f"With a free core for every worker (from the CPU time each 2-worker rank needs per step, "
        f"{', '.join(f'{v * 1000:.0f} ms' for v in ray2['worker_cpu_per_step_s'])}, against the 1-worker "
        f"rank's {ray1['worker_cpu_per_step_s'][0] * 1000:.0f} ms): weak scaling "
        + verdict(projection, TARGET_SCALING)
        + ".",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- measurement


def usable_cores() -> list[int]:
    """The cores this process may run on (all of the machine's, unless started under ``taskset``);
    "the machine" in every share below means these cores."""
    return sorted(os.sched_getaffinity(0))


def cores_text() -> str:
    cores = usable_cores()
    if len(cores) == os.cpu_count():
        return f"{len(cores)} CPU cores"
    return f"{len(cores)} of its {os.cpu_count()} CPU cores (taskset -c {','.join(map(str, cores))})"


def pin_all_threads(core: int) -> None:
    """Pin every thread of this process to ``core`` (``sched_setaffinity`` acts per thread, and
    gloo's and Ray's threads exist before a training function runs)."""
    for task in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(task), {core})


def timed_steps(
    generator: Any, optimizer: Any, batches: Iterator, steps: int, barrier: Callable[[], None]
) -> dict[str, float]:
    """``WARMUP_STEPS`` + ``steps`` SRResNet steps on (lr, hr) batches from ``batches``; times the
    last ``steps``.

    ``barrier`` runs just before and after the timed window, so every process's window is the
    same wall-clock span. Returns seconds per step, CPU seconds of this process (all threads) per
    step, and the window's wall-clock ends (``time.time()``).
    """
    import contextlib

    from srgan_dist.config import LossConfig
    from srgan_dist.train.steps import StepContext, StepModels, srresnet_step

    ctx = StepContext(loss=LossConfig(), autocast=contextlib.nullcontext)
    for _ in range(WARMUP_STEPS):
        srresnet_step(StepModels(generator=generator, optimizer_g=optimizer), *next(batches), ctx)
    barrier()
    start, start_cpu, started_at = time.perf_counter(), time.process_time(), time.time()
    for _ in range(steps):
        srresnet_step(StepModels(generator=generator, optimizer_g=optimizer), *next(batches), ctx)
    barrier()
    wall = time.perf_counter() - start
    return {
        "step_s": wall / steps,
        "cpu_per_step_s": (time.process_time() - start_cpu) / steps,
        "wall_s": wall,
        "window": [started_at, time.time()],
    }


def build_model(model_config: dict) -> tuple[Any, Any]:
    """The stage's generator and fused Adam, as ``trainer.build_trainables`` makes them."""
    from srgan_dist.config import ModelConfig
    from srgan_dist.generator_io import GeneratorSpec
    from srgan_dist.train.steps import make_adam

    generator = GeneratorSpec.from_model_config(ModelConfig(**model_config)).build()
    return generator, make_adam(generator.parameters(), 1e-4, "cpu")


def dali_loader(train_dir: Path) -> Any:
    """The real training loader on the sample photos: DALI on the CPU, 1 decode thread."""
    import torch

    from srgan_dist.data import build_train_loader

    files = sorted(str(p) for p in train_dir.iterdir())
    return build_train_loader(
        files, loader="dali", scale=SCALE, hr_patch_size=PATCH, batch_size=BATCH, rank=0,
        world_size=1, device=torch.device("cpu"), seed=0, num_threads=1,
    )  # fmt: skip


def decode_batches(train_dir: Path, count: int) -> list:
    """``count`` (lr, hr) batches from the real DALI loader, decoded now, owned by this process."""
    loader = dali_loader(train_dir)
    batches = iter(loader)
    decoded = [tuple(t.clone() for t in next(batches)) for _ in range(count)]
    loader.close()
    return decoded


def bare_process(
    model_config: dict, source: list | Path, steps: int, core: int | None, barrier: Any, out: Any
) -> None:
    """One bare loop in a process of its own (1 torch thread, optionally pinned to ``core``):
    pre-decoded batches (``source`` a list, cycled) or DALI decoding in the loop (a folder)."""
    import torch

    torch.set_num_threads(1)
    if core is not None:
        pin_all_threads(core)
    torch.manual_seed(0)
    generator, optimizer = build_model(model_config)
    loader = dali_loader(source) if isinstance(source, Path) else None
    batches = iter(loader) if loader is not None else itertools.cycle(source)
    out.put(timed_steps(generator, optimizer, batches, steps, barrier.wait))
    if loader is not None:
        loader.close()


def bare_loops(
    model_config: dict, source: list | Path, steps: int, pinned_cores: list[int] | None
) -> list[dict]:
    """Bare loops in fresh processes, one per entry of ``pinned_cores`` (or one, unpinned)."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    cores = pinned_cores or [None]
    barrier, out = spawn.Barrier(len(cores)), spawn.Queue()
    processes = [
        spawn.Process(target=bare_process, args=(model_config, source, steps, core, barrier, out))
        for core in cores
    ]
    for process in processes:
        process.start()
    results = [out.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a bare loop process exited with status {process.exitcode}")
    return results


def ray_worker(loop_config: dict) -> None:
    """Ray Train's ``train_loop_per_worker``: the trainer's DDP set-up, then the timed steps."""
    import ray.train
    import torch
    import torch.distributed as dist
    from torch import nn

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if loop_config["pin"]:
        cores = usable_cores()
        pin_all_threads(cores[rank % len(cores)])
    torch.manual_seed(0)
    generator, optimizer = build_model(loop_config["model"])
    if world_size > 1:  # as trainer.StageTrainer._setup wraps it on CPUs
        generator = nn.parallel.DistributedDataParallel(generator, device_ids=None)
    batches = loop_config["batches"]
    batches = itertools.cycle(batches[rank:] + batches[:rank])  # each rank its own order
    barrier = dist.barrier if world_size > 1 else (lambda: None)
    result = timed_steps(generator, optimizer, batches, loop_config["steps"], barrier)
    result["threads"] = torch.get_num_threads()
    result["parameters"] = sum(p.numel() for p in generator.parameters())
    if world_size > 1:
        # One all-reduce of all gradients as one flat tensor: what DDP's buckets move per step.
        flat = torch.ones(result["parameters"])
        dist.all_reduce(flat)
        start = time.perf_counter()
        for _ in range(20):
            dist.all_reduce(flat)
        result["allreduce_ms"] = (time.perf_counter() - start) / 20 * 1000
    path = Path(loop_config["out"]) / f"rank{rank}.json"
    path.write_text(json.dumps(result))


class CpuSampler:
    """A thread that reads, every ``SAMPLE_INTERVAL_S``, the cumulative CPU seconds of this process,
    of every process it started (all of Ray's) and of the whole machine."""

    def __init__(self) -> None:
        # psutil ships inside Ray (ray/thirdparty_files), which importing ray puts on sys.path.
        importlib.import_module("ray")
        psutil = importlib.import_module("psutil")
        self.psutil = psutil
        self.me = psutil.Process()
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def read(self) -> Sample:
        """One reading. A process is keyed by pid and group, so a worker that Ray renames (an
        idle worker becoming a training worker) starts a new series under its new group."""
        groups: dict[int, str | None] = {}
        parents: dict[int, int] = {}
        seconds: dict[int, float] = {}
        for process in [self.me, *self.me.children(recursive=True)]:
            try:
                with process.oneshot():
                    times, parents[process.pid] = process.cpu_times(), process.ppid()
                    cmdline, name = process.cmdline(), process.name()
            except self.psutil.NoSuchProcess:
                continue
            seconds[process.pid] = times.user + times.system
            groups[process.pid] = DRIVER if process == self.me else process_group(cmdline, name)

        def group_of(pid: int) -> str:
            while groups.get(pid) is None and parents.get(pid) in groups:
                pid = parents[pid]  # a helper (forkserver, resource tracker) counts as its parent
            return groups.get(pid) or "other Ray processes"

        readings = {f"{pid}:{group_of(pid)}": (group_of(pid), used) for pid, used in seconds.items()}
        per_core = self.psutil.cpu_times(percpu=True)
        idle = steal = busy = 0.0
        for core in usable_cores():
            times = per_core[core]
            idle += times.idle + times.iowait
            steal += times.steal
            # guest time is already counted in user time (Linux /proc/stat)
            busy += sum(times) - times.idle - times.iowait - times.steal - times.guest - times.guest_nice
        readings.update({"busy": ("busy", busy), IDLE: (IDLE, idle), STEAL: (STEAL, steal)})
        return time.time(), readings

    def _run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(self.read())
            self.stop.wait(SAMPLE_INTERVAL_S)


def ray_run(model_config: dict, batches: list, steps: int, workers: int, pin: bool, work: Path) -> dict:
    """One ``TorchTrainer.fit`` on the running Ray; the ranks' timings and the CPU shares."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    name = f"memory-{workers}{'-pinned' if pin else ''}"
    out = work / name
    out.mkdir(parents=True)
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={
            "model": model_config, "batches": batches, "steps": steps, "pin": pin, "out": str(out),
        },
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=name, storage_path=str(work / "ray-storage")),
    )  # fmt: skip
    with CpuSampler() as sampler:
        trainer.fit()
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(workers)]
    start, end = ranks[0]["window"]
    used = cpu_in_window(sampler.samples, start, end)
    return {
        "workers": workers,
        "step_s": ranks[0]["step_s"],
        "wall_s": ranks[0]["wall_s"],
        "threads": ranks[0]["threads"],
        "worker_cpu_per_step_s": [r["cpu_per_step_s"] for r in ranks],
        "worker_cpu_per_wall": [r["cpu_per_step_s"] / r["step_s"] for r in ranks],
        "allreduce_ms": ranks[0].get("allreduce_ms"),
        "parameters": ranks[0]["parameters"],
        "cpu": machine_shares(used, end - start, len(usable_cores())),
    }


def measure(train_dir: Path, steps: int, real_steps: int, batch_count: int, work: Path) -> dict:
    """Every row: bare loops first (no Ray running), one Ray for the in-memory Ray rows, then the
    ``launch.py`` runs (each starts its own Ray, as a user's run does)."""
    import ray

    from srgan_dist.config import load_config
    from srgan_dist.embedded_ray import init_embedded_ray

    started = time.perf_counter()

    def done(what: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {what}", file=sys.stderr, flush=True)

    cfg = load_config(DEMO_CONFIG, MODEL)
    model_config = dataclasses.asdict(cfg.model)
    batches = decode_batches(train_dir, batch_count)
    bare = bare_loops(model_config, batches, steps, None)[0]
    done("bare loop")
    pair = bare_loops(model_config, batches, steps, usable_cores()[:2])
    done("2 bare loops")
    bare_dali = bare_loops(model_config, train_dir, real_steps, None)[0]
    done("bare loop + DALI")
    # As srgan_dist.driver.connect_ray starts Ray for launch.py: a CPU per worker + 1, at least
    # the machine's cores.
    init_embedded_ray(max(len(usable_cores()), 3), runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}})
    try:
        ray1 = ray_run(model_config, batches, steps, 1, False, work)
        done("Ray Train, 1 worker")
        ray2 = ray_run(model_config, batches, steps, 2, False, work)
        done("Ray Train, 2 workers")
        pinned = ray_run(model_config, batches, steps, 2, True, work)
        done("Ray Train, 2 workers pinned")
    finally:
        ray.shutdown()
    memory = {
        "bare": bare,
        "bare_pair": {
            "step_s": [r["step_s"] for r in pair],
            "samples_per_s": sum(BATCH / r["step_s"] for r in pair),
        },
        "ray1": ray1,
        "ray2": ray2,
        "ray2_pinned": pinned,
    }
    real = {"bare_step_s": bare_dali["step_s"]}
    real["ray1_step_s"] = launch_run(train_dir, work / "runs", "one", 1, real_steps)
    done("launch.py, 1 worker")
    real["ray2_step_s"] = launch_run(train_dir, work / "runs", "two", 2, real_steps)
    done("launch.py, 2 workers")
    return {"memory": memory, "real": real}


def launch_run(train_dir: Path, storage: Path, name: str, workers: int, steps: int) -> float:
    """``python launch.py`` for ``steps`` SRResNet steps on ``workers``; seconds per step."""
    command = [
        sys.executable, str(ROOT / "launch.py"), "--config", str(DEMO_CONFIG),
        "--name", name, "--storage", str(storage), "--workers", str(workers),
        f"data.train={train_dir}", *MODEL,
        "train.stages=[srresnet]", f"srresnet.iterations={steps}", f"srresnet.batch_size={BATCH}",
        f"srresnet.hr_patch_size={PATCH}", f"srresnet.log_interval={steps}",
        f"srresnet.checkpoint_interval={steps}", f"srresnet.val_interval={steps}", "data.val=",
        "data.num_threads=1",
    ]  # fmt: skip
    process = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if process.returncode != 0:
        sys.stdout.write(process.stdout[-6000:])
        raise SystemExit(f"training run {name} failed (status {process.returncode})")
    entry = json.loads((storage / name / "summary.json").read_text())["stages"]["srresnet"]
    return entry["train_time_s"] / entry["steps"]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``""``."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        if line.startswith("model name"):
            return "(" + line.split(":", 1)[1].strip() + ")"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per in-memory run")
    parser.add_argument("--real-steps", type=int, default=30, help="steps per real-data run")
    parser.add_argument("--batches", type=int, default=16, help="pre-decoded batches, cycled")
    parser.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = parser.parse_args(argv)
    for flag in ("steps", "real_steps", "batches"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if len(usable_cores()) < 2:
        parser.error(f"needs at least 2 CPU cores to run 2 workers; this process may use {cores_text()}")

    from srgan_dist.data.prepare import write_sample_data

    started, load_before = time.perf_counter(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="srgan-scaling-"))
    write_sample_data(work / "sample")
    train_dir = work / "sample" / "train"

    measured = measure(train_dir, args.steps, args.real_steps, args.batches, work)
    command = "python bench/train_scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {
        **measured,
        "steps": args.steps,
        "real_steps": args.real_steps,
        "batches": args.batches,
        "command": command.strip(),
        "machine": f"{platform.machine()} {cpu_model()}, {cores_text()}, no GPU used",
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "cores": len(usable_cores()),
        "took_s": time.perf_counter() - started,
    }
    (work / "results.json").write_text(json.dumps(results, indent=2))
    text = report(results)
    print(text)
    print(f"\nraw results: {work / 'results.json'}")
    if args.write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
