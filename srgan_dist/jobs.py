"""Run training as a Ray job on a cluster: build the job request, submit, follow, stop.

The request is plain data built by ``build_training_job`` (unit-tested without Ray); the Jobs
SDK (``ray.job_submission.JobSubmissionClient``) is imported only when a function talks to a
cluster. What ``srgan-dist submit`` sends is what this plain command sends::

    ray job submit --address http://127.0.0.1:8265 --working-dir . --submission-id demo-20260101-120000 \\
        -- python launch.py --address auto --config configs/demo.yaml \\
        --name demo --storage /shared/runs

The job runs in a copy of the working dir that Ray uploads (size limit: Ray's gRPC message size,
512 MiB by default), so heavy folders are excluded and the storage root must be an absolute
path or URI that every node can reach.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TextIO, TypeVar

from srgan_dist.errors import UserError
from srgan_dist.ray_session import ADDRESS_SOURCES, join_problem, resolve_address
from srgan_dist.rundir import LOG_FILE, join_run_location
from srgan_dist.storage import check_uri, is_uri, names_a_credential

# Never uploaded with the working dir (gitignore-style, relative to it). Ray also honours the
# project's .gitignore and a .rayignore.
WORKING_DIR_EXCLUDES = (
    ".git",
    ".venv",
    "venv",
    "/runs",
    "/data",
    "/build",
    "/dist",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    "*.onnx",
    "*.safetensors",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.tar",
    "*.zip",
)

# Metadata keys the job carries so ``status`` can say where its run lives.
META_RUN_NAME = "srgan_run_name"
META_RUN_DIR = "srgan_run_dir"

P = ParamSpec("P")
T = TypeVar("T")


class JobError(UserError):
    """A job request or job-server answer a user has to act on."""


@dataclass(kw_only=True)
class JobRequest:
    """Everything ``JobSubmissionClient.submit_job`` gets, as plain data."""

    entrypoint: str
    """Shell command the job server runs (in the uploaded working dir)."""
    submission_id: str
    """Job id on the cluster; unique per submission."""
    runtime_env: dict[str, Any]
    """``working_dir`` (+ ``excludes``), optional ``pip`` and ``env_vars``."""
    entrypoint_num_cpus: float = 0.0
    """CPUs reserved for the driver process. 0 (no entrypoint resources) makes the job server run
    it on the head node. The driver only orchestrates; a CPU it held would still be counted as
    free by Ray Train's elastic policy, which sizes the worker group from node totals."""
    entrypoint_resources: dict[str, float] = field(default_factory=dict)
    """Custom resources reserved for the driver (e.g. one that only the head node has)."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Stored with the job; holds the run name and run directory."""
    run_dir: str = ""
    """``<storage>/<name>`` of a training job; empty for a custom entrypoint."""


def parse_workers(text: str) -> int | tuple[int, int]:
    """``"4"`` → 4 fixed workers; ``"1-2"`` → elastic ``(min, max)`` workers (as ``launch.py``)."""
    from srgan_dist.config import ConfigError
    from srgan_dist.config import parse_workers as parse

    try:
        return parse(text)
    except ConfigError as error:
        raise JobError(str(error)) from None


def submission_id_for(name: str, now: dt.datetime | None = None) -> str:
    """``<name>-<UTC yyyymmdd-HHMMSS>``: readable, and new on every submission of the same run."""
    now = now or dt.datetime.now(dt.timezone.utc)
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "job"
    return f"{safe_name}-{now.strftime('%Y%m%d-%H%M%S')}"


def check_storage(storage: str) -> str:
    """The storage root a cluster job can use: an absolute path (shared on multi-node clusters)
    or a URI such as ``s3://bucket/runs``."""
    if is_uri(storage):
        try:
            check_uri(storage, "--storage")
        except UserError as error:
            raise JobError(str(error)) from None
        return storage
    if os.path.isabs(storage):
        return storage.rstrip("/") or "/"
    raise JobError(
        f"--storage {storage!r}: a job runs in a temporary copy of the project, so a relative "
        "storage path would vanish with it. Give an absolute path that every node can reach "
        "(an NFS mount on multi-node clusters) or a URI such as s3://bucket/runs."
    )


def training_entrypoint(
    *,
    config: str,
    name: str,
    storage: str,
    overrides: list[str] = (),
    python: str = "python",
    **flags: str | bool | None,
) -> str:
    """The shell command of a training job: ``python launch.py --address auto ...``.

    ``flags`` are launch.py's own training flags by argparse destination
    (``commands.train.TRAINING_FLAGS``, e.g. ``workers="1-2"``, ``resume=True``): a string goes on
    as ``--flag value``, True as ``--flag``; None and False are left out."""
    args = [python, "launch.py", "--address", "auto", "--config", config, "--name", name]
    args += ["--storage", storage]
    for dest, value in flags.items():
        option = "--" + dest.replace("_", "-")
        if isinstance(value, str):
            args += [option, value]
        elif value is True:
            args.append(option)
    args += list(overrides)
    return shlex.join(args)


def build_runtime_env(
    *,
    working_dir: str | Path,
    base: dict[str, Any] | None = None,
    pip: list[str] = (),
    env_vars: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Runtime env of a job: ``base`` (e.g. from ``cluster/runtime_env.yaml``) plus the working
    dir with the standard excludes, extra pip packages and env vars."""
    runtime_env = dict(base or {})
    working_dir = Path(working_dir).resolve()
    if not working_dir.is_dir():
        raise JobError(f"--working-dir {working_dir} is not a directory")
    runtime_env["working_dir"] = str(working_dir)
    runtime_env["excludes"] = sorted(set(runtime_env.get("excludes", [])) | set(WORKING_DIR_EXCLUDES))
    if pip:
        runtime_env["pip"] = list(runtime_env.get("pip", [])) + list(pip)
    merged_env = {"PYTHONUNBUFFERED": "1", **runtime_env.get("env_vars", {}), **(env_vars or {})}
    refuse_secret_env_vars(merged_env)
    runtime_env["env_vars"] = merged_env
    return runtime_env


def refuse_secret_env_vars(env_vars: dict[str, str]) -> None:
    """Refuse to hand a job a variable named like a credential: Ray writes a job's runtime env,
    values included, into ``runtime_env_agent.log`` on every node it runs on (0644 files), and
    into the job's entry in the dashboard. The message names the variables, never their values."""
    secret = sorted(name for name in env_vars if names_a_credential(name))
    if secret:
        raise JobError(
            f"--env / runtime env: {', '.join(secret)} look(s) like credentials, and Ray writes a job's "
            "environment, values included, into its logs on every node. Give the nodes their credentials "
            "instead: an instance profile, IRSA or workload identity, or the nodes' own environment "
            '(cluster YAML, a KubeRay secretKeyRef); see cluster/README.md, "Security"'
        )


def load_runtime_env_file(path: str | Path) -> dict[str, Any]:
    """A runtime env YAML such as ``cluster/runtime_env.yaml``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise JobError(f"--runtime-env {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise JobError(f"--runtime-env {path} must hold a mapping")
    unknown = set(data) - {"working_dir", "excludes", "pip", "env_vars", "uv", "conda", "py_modules"}
    if unknown:
        raise JobError(f"--runtime-env {path}: unsupported key(s) {sorted(unknown)}")
    return data


def config_path_for_job(config: str | Path, working_dir: str | Path) -> str:
    """The config path as the job sees it: relative to the uploaded working dir when the file is
    inside it, else the absolute path (which must then exist on the cluster)."""
    config = Path(config).resolve()
    if not config.is_file():
        raise JobError(f"--config {config} does not exist")
    try:
        return config.relative_to(Path(working_dir).resolve()).as_posix()
    except ValueError:
        print(
            f"note: {config} is outside --working-dir, so it is not uploaded; "
            "the job reads it from that absolute path on the cluster",
            file=sys.stderr,
        )
        return str(config)


@dataclass(kw_only=True)
class JobOptions:
    """How any job is shipped and placed: what ``build_command_job`` and ``build_training_job``
    share."""

    working_dir: str | Path = "."
    """Project folder uploaded with the job (see ``WORKING_DIR_EXCLUDES``)."""
    runtime_env_base: dict[str, Any] | None = None
    """Runtime env to start from, e.g. ``load_runtime_env_file("cluster/runtime_env.yaml")``."""
    pip: list[str] = field(default_factory=list)
    """Extra pip packages installed for the job."""
    env_vars: dict[str, str] | None = None
    """Extra environment variables of the job."""
    entrypoint_num_cpus: float = 0.0
    """See ``JobRequest.entrypoint_num_cpus``."""
    entrypoint_resources: dict[str, float] | None = None
    """See ``JobRequest.entrypoint_resources``."""
    submission_id: str | None = None
    """Job id on the cluster; default ``<name>-<UTC timestamp>``."""


def build_command_job(
    *, entrypoint: str, name: str = "job", options: JobOptions | None = None, run_dir: str = ""
) -> JobRequest:
    """A job that runs any command in the uploaded project (smoke tests, custom scripts, and
    training through ``build_training_job``)."""
    options = options or JobOptions()
    metadata = {META_RUN_NAME: name}
    if run_dir:
        metadata[META_RUN_DIR] = run_dir
    return JobRequest(
        entrypoint=entrypoint,
        submission_id=options.submission_id or submission_id_for(name),
        runtime_env=build_runtime_env(
            working_dir=options.working_dir,
            base=options.runtime_env_base,
            pip=options.pip,
            env_vars=options.env_vars,
        ),
        entrypoint_num_cpus=options.entrypoint_num_cpus,
        entrypoint_resources=dict(options.entrypoint_resources or {}),
        metadata=metadata,
        run_dir=run_dir,
    )


def build_training_job(
    *,
    config: str,
    name: str | None = None,
    storage: str | None = None,
    overrides: list[str] = (),
    python: str = "python",
    options: JobOptions | None = None,
    **flags: str | bool | None,
) -> JobRequest:
    """The job request that trains ``config`` on a cluster.

    The config (with ``overrides``) is validated here, before anything is uploaded; its
    ``run.name`` and ``run.storage`` are the defaults for ``name`` and ``storage``. ``flags`` are
    the job's other launch.py training flags (``training_entrypoint``).
    """
    from srgan_dist.config import load_config

    options = options or JobOptions()
    # --name/--storage are checked as the job's launch.py will check them: `--name ''` is an error.
    run_flags = [f"run.name={name}"] if name is not None else []
    run_flags += [f"run.storage={storage}"] if storage is not None else []
    cfg = load_config(config, [*overrides, *run_flags])
    if flags.get("workers") is not None:
        parse_workers(flags["workers"])
    name = cfg.run.name
    storage = check_storage(cfg.run.storage)
    entrypoint = training_entrypoint(
        config=config_path_for_job(config, options.working_dir),
        name=name,
        storage=storage,
        overrides=list(overrides),
        python=python,
        **flags,
    )
    return build_command_job(
        entrypoint=entrypoint, name=name, options=options, run_dir=join_run_location(storage, name)
    )


# ---------------------------------------------------------------------------------------------
# Talking to a job server (Ray imported here only).


def job_server_call(function: Callable[P, T]) -> Callable[P, T]:
    """Turn the Jobs SDK's failed HTTP requests into ``JobError``: it raises them as bare
    ``RuntimeError`` ("Request failed with status code 404: ..."), which callers could only catch
    together with every other ``RuntimeError``."""

    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return function(*args, **kwargs)
        except RuntimeError as error:
            if type(error) is not RuntimeError:  # a subclass is not the SDK's request failure
                raise
            raise JobError(str(error)) from error

    return call


def client(address: str | None):
    """A ``JobSubmissionClient`` for ``address``, else the one the environment names
    (``ray_session.resolve_address(..., "jobs")``). A ``host:port`` address must be joinable
    (``ray_session.join_problem``): Ray alone retries one for about 40 s."""
    from ray.job_submission import JobSubmissionClient

    resolved = resolve_address(address, "jobs").value
    problem = join_problem(resolved)
    if problem:
        raise JobError(str(problem))
    # The address is resolved here: the SDK would let either variable override it again, so they
    # are hidden while it builds the client (it reads them only there).
    saved = {name: os.environ.pop(name) for name in ADDRESS_SOURCES["jobs"][0] if name in os.environ}
    try:
        return JobSubmissionClient(resolved)
    finally:
        os.environ.update(saved)


@job_server_call
def submit(request: JobRequest, address: str | None = None) -> str:
    """Submit ``request``; returns the submission id."""
    return client(address).submit_job(
        entrypoint=request.entrypoint,
        submission_id=request.submission_id,
        runtime_env=request.runtime_env,
        metadata=request.metadata,
        entrypoint_num_cpus=request.entrypoint_num_cpus,
        entrypoint_resources=request.entrypoint_resources or None,
    )


@job_server_call
def job_info(job_id: str, address: str | None = None):
    """The job server's ``JobDetails`` (status, message, entrypoint, metadata, times)."""
    return client(address).get_job_info(job_id)


@job_server_call
def job_logs(job_id: str, address: str | None = None) -> str:
    """All logs of the job so far."""
    return client(address).get_job_logs(job_id)


@job_server_call
def follow_logs(job_id: str, address: str | None = None, out: TextIO = sys.stdout) -> str:
    """Stream the job's logs to ``out`` until the job ends; returns its final status."""
    import asyncio
    import time

    job_client = client(address)

    async def tail() -> None:
        async for chunk in job_client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    # The log stream closes when the driver exits; the status turns terminal right after.
    deadline = time.monotonic() + 60
    status = job_client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        status = job_client.get_job_status(job_id)
    return str(status)


@job_server_call
def wait_for_status(job_id: str, address: str | None = None, timeout_s: float = 600) -> str:
    """Poll until the job is STOPPED, SUCCEEDED or FAILED (or ``timeout_s`` passes)."""
    import time

    job_client = client(address)
    deadline = time.monotonic() + timeout_s
    status = job_client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(1)
        status = job_client.get_job_status(job_id)
    return str(status)


@job_server_call
def stop(job_id: str, address: str | None = None) -> bool:
    """Ask the job server to stop the job (SIGTERM, then SIGKILL); True if it was running."""
    return client(address).stop_job(job_id)


def run_log_location(run_dir: str) -> str:
    """Where a training job's full log is: ``<run dir>/train.log`` (the job log is its console)."""
    return join_run_location(run_dir, LOG_FILE)


def format_info(info) -> str:
    """A few lines about a job for ``srgan-dist status``."""

    def when(ms: int | None) -> str:
        if not ms:
            return "-"
        return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    lines = [
        f"job:        {info.submission_id}",
        f"status:     {info.status}",
        f"message:    {info.message or '-'}",
        f"entrypoint: {info.entrypoint}",
        f"started:    {when(info.start_time)}",
        f"ended:      {when(info.end_time)}",
    ]
    driver_node_id = getattr(info, "driver_node_id", None)
    if driver_node_id:
        lines.append(f"driver on:  node {driver_node_id}")
    run_dir = (info.metadata or {}).get(META_RUN_DIR)
    if run_dir:
        lines.append(f"run dir:    {run_dir}")
        lines.append(f"full log:   {run_log_location(run_dir)}")
    return "\n".join(lines)
