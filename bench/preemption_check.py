"""What asking Ray Train about preemption costs a training step (``train.preemption_check_interval``).

    python bench/preemption_check.py            # prints the table
    python bench/preemption_check.py --write    # and makes it BENCHMARKS.md's section

A real ``TorchTrainer`` with 2 CPU workers on an embedded Ray (started as ``launch.py`` starts
it, but with Ray Train's PreemptionWatcher on, as on a cluster). Each worker calls
``ray.train.get_preemption_info()`` (``srgan_dist.train.loop.preemption_notice``'s call: a
barrier, rank 0's answer broadcast through Ray Train's synchronization actor) ``--calls`` times,
each after a gloo all-reduce that lines the ranks up as a training step's gradient all-reduce
does, so the time is the call's own round trip, not one rank waiting for the other. The cost per
step at a check interval of N steps is that time / N, set against the step time of the demo
config's 2-worker CPU run (bench/train_scaling.py, "Training: Ray overhead and weak scaling").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _report import write_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SECTION = "Preemption check: cost per step"
INTERVALS = (1, 10, 50)


def measure(calls: int, out: str) -> None:
    """Ray Train worker: time ``calls`` preemption checks; rank 0 writes the times to ``out``."""
    import ray.train
    import torch
    import torch.distributed as dist

    from srgan_dist.train.loop import preemption_notice

    line_up = torch.zeros(1)
    times = []
    for call in range(calls + 10):  # 10 warm-up calls
        dist.all_reduce(line_up)
        started = time.perf_counter()
        assert preemption_notice() is None
        if call >= 10:
            times.append(time.perf_counter() - started)
    if ray.train.get_context().get_world_rank() == 0:
        Path(out).write_text(json.dumps(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="timed checks per worker")
    parser.add_argument("--step-ms", type=float, default=281.0, help="step time to set the cost against")
    parser.add_argument("--write", action="store_true", help="make the table BENCHMARKS.md's section")
    args = parser.parse_args()

    os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "1"  # a cluster's default
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from srgan_dist.embedded_ray import init_embedded_ray

    with tempfile.TemporaryDirectory(prefix="preempt-bench-", dir="/tmp") as scratch:
        os.environ.setdefault("RAY_TMPDIR", scratch)
        init_embedded_ray(num_cpus=2)
        out = str(Path(scratch) / "times.json")
        trainer = TorchTrainer(
            lambda: measure(args.calls, out),
            scaling_config=ScalingConfig(num_workers=2),
            run_config=RunConfig(name="preemption-check", storage_path=str(Path(scratch) / "runs")),
        )
        trainer.fit()
        times = json.loads(Path(out).read_text())

    median_ms = statistics.median(times) * 1000
    p90_ms = statistics.quantiles(times, n=10)[-1] * 1000
    lines = [
        f"`get_preemption_info()` on 2 CPU workers: median {median_ms:.2f} ms, p90 {p90_ms:.2f} ms per call "
        f"({len(times)} calls).",
        "",
        f"| train.preemption_check_interval | cost per step | share of a {args.step_ms:.0f} ms step |",
        "|---|---|---|",
    ]
    for interval in INTERVALS:
        per_step = median_ms / interval
        lines.append(f"| {interval} | {per_step:.3f} ms | {100 * per_step / args.step_ms:.2f} % |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        load = os.getloadavg()
        command = "python bench/preemption_check.py " + " ".join(sys.argv[1:])
        date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        body = (
            f"`{command.strip()}` ({date}; {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; "
            f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at its end, on a machine "
            "shared with other jobs)\n\n"
            "Each check is a barrier through Ray Train's synchronization actor, timed after a gloo "
            "all-reduce that lines the ranks up (as a step's gradient all-reduce does). The step "
            f"time is the demo config's 2-worker CPU step ({args.step_ms:.0f} ms, \"Training: Ray "
            'overhead and weak scaling"); with a faster GPU step the share grows in proportion, and '
            "the interval should keep the check under about 1 % of the steps it spans.\n\n" + table
        )
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
