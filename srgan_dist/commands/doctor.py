"""``doctor``: check a Ray cluster before a long run (checks in ``srgan_dist/doctor.py``).

    srgan-dist doctor --address auto --config configs/div2k_x4.yaml --storage /shared/runs
    srgan-dist doctor --address http://127.0.0.1:8265 --config configs/demo.yaml   # as a job

With a ``host:port`` GCS address or ``auto`` it joins the cluster as a Ray driver; with a job
server URL (``http://...``, e.g. from ``cluster/local_cluster.sh env``) it submits itself as a job
that uploads the current directory, like ``submit``, and prints that job's output. Exit status 1
when any check FAILs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from srgan_dist.commands.cluster import job_server_errors
from srgan_dist.commands.train import add_overrides, config_from_args

DEFAULT_TIMEOUT_S = 90.0


def register(subparsers) -> None:
    doctor = subparsers.add_parser(
        "doctor",
        help="Check a Ray cluster before a long run (nodes, versions, GPUs, storage, all-reduce, VGG)",
        description=(
            "Pre-flight checks of a Ray cluster, one line per check and node: "
            "PASS|WARN|FAIL CHECK NODE REASON [fix: ...]. Exits 1 if any check FAILs."
        ),
    )
    doctor.add_argument(
        "--address",
        help="GCS address (host:port), 'auto' on a cluster node, or a job server URL (http://HOST:8265: "
        "doctor then runs as a job); default: $RAY_ADDRESS, else auto",
    )
    doctor.add_argument("--config", help="the YAML preset of the run to check (default: built-in defaults)")
    doctor.add_argument("--storage", help="storage root of the run (default: run.storage of the config)")
    doctor.add_argument(
        "--workers", metavar="N|MIN-MAX", help="workers to check for (default: scaling.num_workers)"
    )
    doctor.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"seconds each check may take before it FAILs (default {DEFAULT_TIMEOUT_S:g})",
    )
    add_overrides(doctor)
    doctor.set_defaults(func=job_server_errors(run), name=None)


def run(args: argparse.Namespace) -> int:
    from srgan_dist.config import ConfigError, resolve_paths
    from srgan_dist.ray_session import join_cluster, resolve_address

    address = resolve_address(args.address, "doctor").value
    try:
        cfg = resolve_paths(config_from_args(args))
    except ConfigError as error:
        print(f"srgan-dist doctor: {error}", file=sys.stderr)
        return 2
    if address.startswith(("http://", "https://")):
        return run_as_job(args, address)
    problem = join_cluster(address)
    if problem:
        print(f"FAIL connect cluster {problem.reason} fix: {problem.fix}", flush=True)
        return 1

    from srgan_dist.doctor import Doctor

    started = time.monotonic()
    lines = Doctor(cfg, cfg.run.storage, timeout_s=args.timeout).run()
    counts = {status: sum(line.status == status for line in lines) for status in ("PASS", "WARN", "FAIL")}
    print(
        f"doctor: {counts['PASS']} PASS, {counts['WARN']} WARN, {counts['FAIL']} FAIL "
        f"in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    return 1 if counts["FAIL"] else 0


def run_as_job(args: argparse.Namespace, address: str) -> int:
    """Submit ``srgan-dist doctor --address auto ...`` to the job server and relay its output."""
    from srgan_dist import jobs

    command = [
        "python",
        "-m",
        "srgan_dist.cli",
        "doctor",
        "--address",
        "auto",
        "--timeout",
        f"{args.timeout:g}",
    ]
    if args.config:
        command += ["--config", jobs.config_path_for_job(args.config, ".")]
    if args.storage:
        command += ["--storage", args.storage]
    if args.workers:
        command += ["--workers", args.workers]
    request = jobs.build_command_job(entrypoint=shlex.join(command + list(args.overrides)), name="doctor")
    job_id = jobs.submit(request, address)
    print(f"doctor runs as job {job_id} on {address}", flush=True)
    status = jobs.follow_logs(job_id, address)
    print(f"doctor job {job_id} ended: {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1
