"""Where start-up time goes: ``python launch.py`` to the first training step, and from the end of
one stage to the first step of the next (targets: 20 s and 10 s on a 2-core machine).

    python bench/startup.py                 # tiny generated photos, the tests' tiny model
    python bench/startup.py --repeats 3     # median of 3 runs

It runs the real command (``python launch.py``, an embedded Ray, 2 CPU workers) on a tiny model
and tiny generated photos, so what it times is orchestration, not training, then reads the
milestones from the run's ``train.log``, where every line has a timestamp (worker lines: when they
reached the driver, which Ray streams with a lag under a second). Import costs are timed apart, in
fresh interpreters. Prints a table; ``--write`` makes it BENCHMARKS.md's "Start-up breakdown" section.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# (label, regex on a train.log line); the first line matching each marks that milestone.
MILESTONES = (
    ("pre-flight done (imports, config, data scan)", r"srgan_dist\.console: Data: "),
    ("Ray started (ray.init, dashboard)", r"Started a local Ray instance|Connected to Ray"),
    ("run submitted (TorchTrainer.fit)", r"srgan_dist\.console: Training on (CPUs|GPUs)"),
    ("controller up, worker group started", r"TrainController .*Started training worker group"),
    ("rank 0 set up (imports, model, data loader)", r"\[srresnet\] starting on"),
    ("first step of stage 1", r"\[srresnet\] step 1/"),
    ("last step of stage 1", r"\[srresnet\] step {iters}/"),
    ("stage 1 exported", r"Stage srresnet: done"),
    ("stage 2 rank 0 set up", r"\[srgan\] starting on"),
    ("first step of stage 2", r"\[srgan\] step 1/"),
)
FIRST_STEP, STAGE_1_EXPORTED, STAGE_2_FIRST_STEP = 5, 7, 9  # indexes into MILESTONES
IMPORTS = {
    "srgan_dist CLI + config": "import srgan_dist.commands.train, srgan_dist.config",
    "srgan_dist.driver": "import srgan_dist.driver",
    "torch": "import torch",
    "ray": "import ray",
    "ray.train.torch": "import ray.train.torch",
    "worker: srgan_dist.train.loop": "import srgan_dist.train.loop",
}
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def import_seconds(statement: str, repeats: int) -> float:
    """Median wall time of ``statement`` in a fresh interpreter (interpreter start excluded)."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    runs = [float(subprocess.check_output([sys.executable, "-c", code], cwd=ROOT)) for _ in range(repeats)]
    return statistics.median(runs)


def timestamps(log: Path, iterations: int) -> list[float | None]:
    """Epoch seconds of each milestone in ``log`` (None when missing), in order."""
    lines = log.read_text().splitlines()
    result: list[float | None] = []
    position = 0
    for _, pattern in MILESTONES:
        regex = re.compile(pattern.format(iters=iterations))
        found = None
        for index in range(position, len(lines)):
            stamp = STAMP.match(lines[index])
            if stamp and regex.search(lines[index]):
                found = dt.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                position = index + 1
                break
        result.append(found)
    return result


def ray_processes(ray_tmp: Path, started: float) -> list[tuple[float, str]]:
    """Ray's worker processes of the run, from its session logs: (seconds since launch, what ran
    in it), oldest first. Each is a fresh Python interpreter; "idle" ones were prestarted by Ray
    and never used."""
    rows = []
    for log in ray_tmp.glob("ray/session_2*/logs/python-core-worker-*.log"):
        stamp = re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", log.read_text())
        worker_id = re.search(r"python-core-worker-([0-9a-f]+)_", log.name)
        if not (stamp and worker_id):
            continue
        began = dt.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        what = "idle"
        for out in log.parent.glob(f"worker-{worker_id.group(1)}-*.out"):
            text = out.read_text()
            actor = re.search(r":actor_name:(\S+)", text)
            what = actor.group(1) if actor else ("task" if ":task_name:" in text else what)
        rows.append((began - started, what))
    return sorted(rows)


def one_run(
    workdir: Path, iterations: int, extra: list[str]
) -> tuple[float, list[float | None], float, list]:
    """Run launch.py once; return (start time, milestone times, process end time, Ray processes)."""
    from conftest import write_photos
    from test_training import tiny_overrides

    photos = {"train": workdir / "train", "val": workdir / "val"}
    if not photos["train"].is_dir():
        write_photos(photos["train"], 6, (64, 64), seed=1)
        write_photos(photos["val"], 2, (48, 48), seed=2)
    name = f"startup-{time.time_ns()}"
    overrides = tiny_overrides(photos, workdir / "runs", name, *extra)
    overrides += [f"{stage}.iterations={iterations}" for stage in ("srresnet", "srgan")]
    # Its own Ray temp dir: ray.init() would join a `ray start` cluster it finds in /tmp/ray.
    ray_tmp = workdir / "ray"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": str(ray_tmp)}
    started = time.time()
    subprocess.run(
        [sys.executable, "launch.py", "--config", "configs/demo.yaml", *overrides],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    ended = time.time()
    processes = ray_processes(ray_tmp, started)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return started, timestamps(workdir / "runs" / name / "train.log", iterations), ended, processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs of launch.py (median is shown)")
    parser.add_argument("--iterations", type=int, default=4, help="steps per stage")
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for the run")
    args = parser.parse_args()

    load = os.getloadavg()
    rows: list[tuple[str, str]] = []
    for label, statement in IMPORTS.items():
        rows.append((f"import {label} (fresh interpreter)", f"{import_seconds(statement, 3):.2f}"))

    with tempfile.TemporaryDirectory(prefix="srgan-startup-", dir="/tmp") as tmp:
        runs = [one_run(Path(tmp), args.iterations, args.overrides) for _ in range(args.repeats)]
    previous_label = "python launch.py started"
    for index, (label, _) in enumerate(MILESTONES):
        deltas, totals = [], []
        for started, marks, _, _ in runs:
            before = started if index == 0 else marks[index - 1]
            if marks[index] is not None and before is not None:
                deltas.append(marks[index] - before)
                totals.append(marks[index] - started)
        if deltas:
            rows.append(
                (
                    f"{previous_label} → {label}",
                    f"{statistics.median(deltas):.2f}   (at {statistics.median(totals):.1f})",
                )
            )
        else:
            rows.append((f"{previous_label} → {label}", "n/a (milestone not in train.log)"))
        previous_label = label
    first_step = [marks[FIRST_STEP] - started for started, marks, _, _ in runs if marks[FIRST_STEP]]
    between = [
        marks[STAGE_2_FIRST_STEP] - marks[STAGE_1_EXPORTED]
        for _, marks, _, _ in runs
        if marks[STAGE_2_FIRST_STEP] and marks[STAGE_1_EXPORTED]
    ]
    total = [ended - started for started, _, ended, _ in runs]

    width = max(len(label) for label, _ in rows)
    lines = [
        f"Start-up breakdown: {args.repeats} run(s) of launch.py, tiny model, 2 CPU workers, "
        f"{args.iterations} steps per stage",
        f"machine: {os.cpu_count()} CPUs; load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
        "",
        f"{'step':{width}s}   seconds (median; 'at' = since launch)",
        *(f"{label:{width}s}   {value}" for label, value in rows),
        "",
        f"launch → first step of stage 1: {statistics.median(first_step):.1f} s   (target ≤ 20 s)"
        if first_step
        else "launch → first step: n/a",
        f"stage 1 exported → first step of stage 2: {statistics.median(between):.1f} s   (target ≤ 10 s)"
        if between
        else "between stages: n/a",
        f"whole run (process exit): {statistics.median(total):.1f} s",
        "",
        "Ray worker processes of the first run (each a fresh interpreter: import ray, and for Ray",
        "Train's actors ray.train, timed above; RayTrainWorker and TrainController import torch too):",
        *(f"  started at {at:5.1f} s   {what}" for at, what in runs[0][3]),
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        from _report import write_section

        command = "python bench/startup.py " + " ".join(sys.argv[1:])
        date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        write_section("Start-up breakdown", f"`{command.strip()}` ({date})\n\n```\n{text}\n```")


if __name__ == "__main__":
    main()
