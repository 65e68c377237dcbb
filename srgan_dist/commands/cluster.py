"""``submit``, ``status``, ``logs``, ``stop``: run training as a Ray job on a cluster.

    srgan-dist submit --address http://127.0.0.1:8265 --config configs/demo.yaml --name demo \\
        --storage /shared/runs --workers 2 --wait
    srgan-dist logs demo-20260101-120000 --follow
    srgan-dist stop demo-20260101-120000

The job server address comes from ``--address``, else ``$RAY_API_SERVER_ADDRESS``, else
``$RAY_ADDRESS``, else http://127.0.0.1:8265 (an SSH tunnel or ``kubectl port-forward`` to the
head's dashboard port): the Jobs SDK's own order, for every one of these commands
(``srgan_dist/ray_session.py``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from srgan_dist.commands import train
from srgan_dist.errors import UserError
from srgan_dist.rundir import TENSORBOARD_DIR
from srgan_dist.storage import is_uri

ADDRESS_HELP = (
    "job server URL (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else http://127.0.0.1:8265)"
)


def register(subparsers) -> None:
    submit = subparsers.add_parser(
        "submit",
        help="Submit a training job to a Ray cluster's job server",
        description=(
            "Upload the project (--working-dir) and run `python launch.py --address auto --config "
            "FILE ...` as a Ray job. key.path=value arguments override config values. Prints the "
            "job id, how to follow it, the run directory and the TensorBoard command."
        ),
    )
    submit.add_argument("--address", default=None, help=ADDRESS_HELP)
    submit.add_argument("--config", help="config YAML (inside --working-dir, or an absolute path)")
    train.add_training_flags(
        submit,
        helps={
            "storage": "storage root every node can reach: absolute (NFS) path or URI such as "
            "s3://bucket/runs (default: run.storage of the config, which must then be absolute)",
        },
    )
    submit.add_argument("--wait", action="store_true", help="follow the logs; exit 1 unless it succeeds")
    submit.add_argument("--working-dir", default=".", help="project folder to upload (default .)")
    submit.add_argument(
        "--runtime-env", metavar="FILE", help="runtime env YAML to start from (e.g. cluster/runtime_env.yaml)"
    )
    submit.add_argument(
        "--pip",
        action="append",
        default=[],
        metavar="PKG",
        help="extra pip package for the job, repeatable (not needed when the cluster image has the project)",
    )
    submit.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable for the job"
    )
    submit.add_argument(
        "--python", default="python", help="python executable on the cluster (default: python)"
    )
    submit.add_argument(
        "--entrypoint-num-cpus",
        type=float,
        default=0.0,
        help="CPUs reserved for the driver process (default 0: the job server then runs it on the "
        "head node; the driver only orchestrates, and a reserved CPU would make elastic runs "
        "count one worker slot too many)",
    )
    submit.add_argument(
        "--entrypoint-resources",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="custom resources for the driver, e.g. '{\"head\": 1}'",
    )
    submit.add_argument("--submission-id", help="job id (default: <name>-<UTC timestamp>)")
    submit.add_argument(
        "--entrypoint",
        help="advanced: run this shell command instead of launch.py (smoke tests, custom scripts)",
    )
    train.add_overrides(submit)
    submit.set_defaults(func=job_server_errors(run_submit))

    status = subparsers.add_parser(
        "status", help="Show a submitted job's status", description="Show a job's status"
    )
    status.add_argument("job_id", metavar="JOB")
    status.add_argument("--address", default=None, help=ADDRESS_HELP)
    status.set_defaults(func=job_server_errors(run_status))

    logs = subparsers.add_parser(
        "logs", help="Print or follow a submitted job's logs", description="Print a job's logs"
    )
    logs.add_argument("job_id", metavar="JOB")
    logs.add_argument("--address", default=None, help=ADDRESS_HELP)
    logs.add_argument("--follow", "-f", action="store_true", help="follow until the job ends")
    logs.set_defaults(func=job_server_errors(run_logs))

    stop = subparsers.add_parser("stop", help="Stop a submitted job", description="Stop a job")
    stop.add_argument("job_id", metavar="JOB")
    stop.add_argument("--address", default=None, help=ADDRESS_HELP)
    stop.add_argument("--no-wait", action="store_true", help="return without waiting for STOPPED")
    stop.set_defaults(func=job_server_errors(run_stop))


def job_server_errors(command):
    """Print job-server failures (unreachable, unauthorised, unknown job) as one line; exit 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except Exception as error:
            if not isinstance(error, _job_server_error_types()):
                raise
            print(f"srgan-dist {args.command}: {one_line(error)}", file=sys.stderr)
            return 1

    return run


def one_line(error: Exception) -> str:
    """An error as one line: Ray's token refusal runs to a paragraph of advice; ours is the fix."""
    from ray.exceptions import AuthenticationError

    from srgan_dist.ray_session import TOKEN_FIX

    first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return f"{first}; {TOKEN_FIX}" if isinstance(error, AuthenticationError) else first


def _job_server_error_types() -> tuple[type[Exception], ...]:
    """What a job command reports in one line: ``UserError`` (``jobs.JobError`` included: the job
    client turns the Jobs SDK's failed requests into one), a refused connection, a refused token."""
    from ray.exceptions import AuthenticationError  # Ray is loaded by now if it matters

    return (UserError, ConnectionError, AuthenticationError)


def _env_vars(pairs: list[str]) -> dict[str, str]:
    from srgan_dist.jobs import JobError

    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise JobError(
                "--env: expected KEY=VALUE, got a word without '=' (not shown: it may be a secret)"
            )
        env[key] = value
    return env


def run_submit(args: argparse.Namespace) -> int:
    from srgan_dist import jobs
    from srgan_dist.ray_session import resolve_address

    address = resolve_address(args.address, "jobs").value
    try:  # a bad request is the user's to fix (exit 2); the job server's errors exit 1
        options = jobs.JobOptions(
            working_dir=args.working_dir,
            runtime_env_base=jobs.load_runtime_env_file(args.runtime_env) if args.runtime_env else None,
            pip=args.pip,
            env_vars=_env_vars(args.env),
            entrypoint_num_cpus=args.entrypoint_num_cpus,
            entrypoint_resources=args.entrypoint_resources,
            submission_id=args.submission_id,
        )
        if args.entrypoint:
            request = jobs.build_command_job(
                entrypoint=args.entrypoint, name=args.name or "job", options=options
            )
        else:
            if not args.config:
                print("srgan-dist submit: --config is required (or --entrypoint)", file=sys.stderr)
                return 2
            request = jobs.build_training_job(
                config=args.config,
                overrides=args.overrides,
                python=args.python,
                options=options,
                **train.training_flag_values(args),
            )
    except UserError as error:
        print(f"srgan-dist submit: {error}", file=sys.stderr)
        return 2

    job_id = jobs.submit(request, address)
    q_id, q_addr = shlex.quote(job_id), shlex.quote(address)
    print(f"Submitted job {job_id} to {address}")
    print(f"  entrypoint:   {request.entrypoint}")
    print(f"  follow logs:  srgan-dist logs {q_id} --follow --address {q_addr}")
    print(f"                ray job logs {q_id} --follow --address {q_addr}")
    print(f"  status, stop: srgan-dist status {q_id} / srgan-dist stop {q_id} (same --address)")
    if request.run_dir:
        print(f"  run dir:      {request.run_dir}")
        print(f"  full log:     {jobs.run_log_location(request.run_dir)} (Ray and every worker)")
        if is_uri(request.run_dir):  # uploaded by rank 0 at each log step
            print(f"  TensorBoard:  srgan-dist tensorboard {shlex.quote(request.run_dir)}")
        else:
            print(
                f"  TensorBoard:  tensorboard --logdir {shlex.quote(request.run_dir + '/' + TENSORBOARD_DIR)} --host 127.0.0.1"
            )
    sys.stdout.flush()
    if not args.wait:
        return 0
    try:
        status = jobs.follow_logs(job_id, address)
    except KeyboardInterrupt:
        print(f"\nStopped following; the job keeps running. Stop it with: srgan-dist stop {q_id}")
        return 130
    print(f"Job {job_id} ended: {status}")
    if status != "SUCCEEDED" and request.run_dir:
        print(f"Full log: {jobs.run_log_location(request.run_dir)}")
    return 0 if status == "SUCCEEDED" else 1


def run_status(args: argparse.Namespace) -> int:
    from srgan_dist import jobs

    print(jobs.format_info(jobs.job_info(args.job_id, args.address)))
    return 0


def run_logs(args: argparse.Namespace) -> int:
    from srgan_dist import jobs

    if args.follow:
        status = jobs.follow_logs(args.job_id, args.address)
        print(f"Job {args.job_id} ended: {status}", file=sys.stderr)
        run_dir = (jobs.job_info(args.job_id, args.address).metadata or {}).get(jobs.META_RUN_DIR)
        if status != "SUCCEEDED" and run_dir:
            print(f"Full log: {jobs.run_log_location(run_dir)}", file=sys.stderr)
        return 0
    sys.stdout.write(jobs.job_logs(args.job_id, args.address))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from srgan_dist import jobs

    was_running = jobs.stop(args.job_id, args.address)
    if not was_running:
        print(f"Job {args.job_id} was not running")
    if args.no_wait:
        return 0
    status = jobs.wait_for_status(args.job_id, args.address, timeout_s=120)
    print(f"Job {args.job_id}: {status}")
    return 0 if status in ("STOPPED", "SUCCEEDED", "FAILED") else 1
