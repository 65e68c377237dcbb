"""This process's session with a Ray cluster: which address, can it be joined, GPU or CPU, how many
workers. The training driver, the job client and the doctor all ask here.

- **Which address** (``resolve_address``): ``--address``, then the environment, then the
  command's default; one precedence table for every command.
- **Can it be joined** (``join_problem``): a ``host:port`` where nothing answers, a loopback address
  Ray would dial as this machine's IP, a cluster that refuses this process's token. Each is found
  within seconds and said in one wording (``AddressProblem``); callers wrap it in their own error.
- **GPU or CPU, and the workers** (``use_gpu``, ``workers_setting``, ``scaling_config``): one
  rule and one Ray Train ``ScalingConfig`` for the training run and the doctor's all-reduce.
- **Joining** (``connect_ray``, ``join_cluster``), the wait for the workers' resources
  (``wait_for_workers``) and the embedded Ray's capacity (``embedded_capacity_problem``).

The embedded single-machine Ray itself (every listener on 127.0.0.1) is ``embedded_ray.py``: the
tests start theirs with it too. Ray is imported inside functions only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from srgan_dist.config import ScalingConfig
from srgan_dist.console import say
from srgan_dist.errors import UserError
from srgan_dist.storage import is_uri

JOB_SERVER_DEFAULT = "http://127.0.0.1:8265"
# How long a host:port (GCS) address may take to accept a TCP connection.
GCS_CONNECT_TIMEOUT_S = 5.0

Purpose = Literal["train", "doctor", "jobs"]

# Per purpose: the environment variables read after --address (first set wins), then the default
# (None: training starts an embedded local Ray). The job client's order is the Jobs SDK's own
# (ray/dashboard/utils.py); training and the doctor join a GCS, which Ray reads from RAY_ADDRESS.
ADDRESS_SOURCES: dict[Purpose, tuple[tuple[str, ...], str | None]] = {
    "train": (("RAY_ADDRESS",), None),
    "doctor": (("RAY_ADDRESS",), "auto"),
    "jobs": (("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"), JOB_SERVER_DEFAULT),
}


class ClusterError(UserError):
    """The Ray cluster cannot give the run what it needs (e.g. no GPUs within the timeout)."""


@dataclass(frozen=True)
class Address:
    """A resolved Ray address and where it came from (``--address``, an env var, ``default``)."""

    value: str | None
    source: str

    def __str__(self) -> str:
        """``--address=host:port``: how error messages name it."""
        return f"{self.source}={self.value}"


def resolve_address(flag: str | None, purpose: Purpose) -> Address:
    """The address a command talks to: ``--address``, else the first set variable of
    ``ADDRESS_SOURCES[purpose]``, else that purpose's default."""
    if flag:
        return Address(flag, "--address")
    env_names, default = ADDRESS_SOURCES[purpose]
    for name in env_names:
        if os.environ.get(name):
            return Address(os.environ[name], name)
    return Address(default, "default")


@dataclass(frozen=True)
class AddressProblem:
    """Why this process cannot use a Ray address, and what to do: the one wording of each problem."""

    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.reason}. Fix: {self.fix}"


TOKEN_FIX = (
    "on a cluster with token auth export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<its token file> "
    "(cluster/local_cluster.sh env prints both)"
)


def host_and_port(address: str) -> tuple[str, str]:
    """``(host, port)`` of a ``host:port`` or ``ray://host:port`` Ray address, as written."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host, port


def same_host_port(a: str, b: str) -> bool:
    """Whether two ``host:port`` addresses name the same endpoint (host names resolved)."""

    def endpoint(address: str) -> tuple[str, str]:
        host, port = host_and_port(address)
        with contextlib.suppress(OSError):  # unresolvable: compared as written
            host = socket.gethostbyname(host)
        return host, port

    return endpoint(a) == endpoint(b)


def tcp_refusal(address: str, timeout_s: float = GCS_CONNECT_TIMEOUT_S) -> str | None:
    """Why a ``host:port`` (or ``ray://host:port``) refuses or ignores a TCP connection for
    ``timeout_s``; None when it answers or is not such an address (``auto``, URLs).

    Ray itself, given a GCS address where nothing listens, retries for a long time (about 40 s in
    the Jobs SDK, with no limit in ``ray.init``) before a traceback.
    """
    if is_uri(address.removeprefix("ray://")) or address == "auto":
        return None
    host, port = host_and_port(address)
    if not host or not port.isdigit():
        return None  # Ray's own message for an address it cannot parse
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        return str(error) or "timed out"
    return None


def token_refusal(address: str, timeout_s: float = GCS_CONNECT_TIMEOUT_S) -> str | None:
    """Ray's own message when the GCS at a ``host:port`` address refuses this process's
    authentication (a cluster with token auth, and no token or another one here); None when it
    accepts it, or when no answer comes within ``timeout_s`` (not a GCS, busy): ``ray.init``
    then says what is wrong itself.

    ``ray.init`` meets a refused token as any other failed connection: it tries again once a second
    for 20 s and then says only "Failed to connect". One GCS client, Ray's own (what ``ray.init``
    builds first), gets the refusal in well under a second. It runs in a thread so that an address
    that is no GCS (Ray's client then waits about 13 s) costs ``timeout_s`` at most.
    """
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    refusal: list[str] = []

    def probe() -> None:
        try:
            GcsClient(address=address)
        except AuthenticationError as error:  # its advice after "Ensure ..." is a paragraph
            refusal.append(str(error).split(". Ensure")[0].removeprefix("RPC error: "))
        except Exception:  # not a GCS, not reachable, busy: ray.init reports those itself
            pass

    thread = threading.Thread(target=probe, name="gcs-auth-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return refusal[0] if refusal else None


def loopback_dialled_as(address: str) -> str | None:
    """The ``host:port`` that ``ray.init`` dials for ``address`` when it is not ``address`` itself:
    on Linux Ray replaces a loopback host (127.0.0.1, localhost) with this machine's routable IP
    (``ray._private.services.canonicalize_bootstrap_address``), unless its single-machine switch
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` was set before Ray was imported."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        dialled = canonicalize_bootstrap_address(address)
    except Exception:  # an address Ray cannot parse: ray.init says so itself
        return None
    if not dialled or host_and_port(dialled)[0] == host_and_port(address)[0]:
        return None
    return dialled


def unreachable(address: str, timeout_s: float = GCS_CONNECT_TIMEOUT_S) -> AddressProblem | None:
    """A ``host:port`` address where nothing answers within ``timeout_s``."""
    refusal = tcp_refusal(address, timeout_s)
    if refusal is None:
        return None
    return AddressProblem(
        f"no Ray cluster answers at {address} ({refusal})",
        "start one (ray start --head, cluster/local_cluster.sh up) or fix the address: the head's GCS "
        f"host:port, 'auto' on a cluster node, or for submit, status, logs, stop and doctor the job "
        f"server URL (e.g. {JOB_SERVER_DEFAULT})",
    )


def join_problem(address: str, timeout_s: float = GCS_CONNECT_TIMEOUT_S) -> AddressProblem | None:
    """Why ``ray.init(address)`` cannot join the Ray at ``address``, found within seconds; None
    when nothing stands in the way or the address is no ``host:port`` (a URL, ``auto``):
    - nothing answers there (``unreachable``);
    - Ray would dial this machine's IP instead of the loopback address given, where a cluster that
      listens on loopback only (cluster/local_cluster.sh) does not answer: ``ray.init`` would
      retry for minutes;
    - the GCS refuses this process's authentication token (``token_refusal``).
    The last two only for a GCS ``host:port``: ``auto`` is found on this node, ``ray://`` is a Ray
    Client server."""
    problem = unreachable(address, timeout_s)
    if problem or address == "auto" or address.startswith("ray://") or is_uri(address):
        return problem
    dialled = loopback_dialled_as(address)
    if dialled and tcp_refusal(dialled, timeout_s):
        return AddressProblem(
            f"Ray would dial {dialled} for {address} (on Linux it replaces a loopback host with this "
            "machine's IP) and nothing answers there: the cluster listens on loopback only",
            "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray's single-machine switch; "
            "cluster/local_cluster.sh env prints it), or give an address the cluster listens on",
        )
    refusal = token_refusal(dialled or address, timeout_s)
    if refusal:
        return AddressProblem(
            f"the Ray cluster at {address} refused this process's authentication ({refusal})", TOKEN_FIX
        )
    return None


# ---------------------------------------------------------------------------------------------
# Training's address and connection


def training_address_problem(flag: str | None) -> AddressProblem | None:
    """What stops training from joining the Ray of ``--address`` (else ``RAY_ADDRESS``), found
    before anything is written: a job-server URL, ``join_problem``, or another cluster than the
    one this process already joined (Ray keeps one connection per process). None without an
    address (an embedded Ray is started) or when nothing stands in the way."""
    address = resolve_address(flag, "train")
    if address.value is None:
        return None
    if is_uri(address.value) and not address.value.startswith("ray://"):
        return AddressProblem(
            f"{address} is a URL: that is the job server, which `srgan-dist submit` takes. Training "
            "joins a cluster by its GCS address (host:6379, or 'auto' inside a cluster job)",
            "unset RAY_ADDRESS to train on an embedded local Ray",
        )
    problem = unreachable(address.value)
    if problem:
        return AddressProblem(f"{address}: {problem.reason}", problem.fix)
    import ray  # only with an address: a run with nothing left to train needs no Ray

    if ray.is_initialized():  # connect_ray will not call ray.init again
        connected = ray.get_runtime_context().gcs_address
        if address.value == "auto" or same_host_port(address.value, connected):
            return None
        return AddressProblem(
            f"{address}: this process is already connected to the Ray cluster at {connected} "
            "(ray.init was called before training) and Ray joins one cluster per process",
            "call ray.shutdown() first, or train without an address on the cluster already joined",
        )
    problem = join_problem(address.value)
    return AddressProblem(f"{address}: {problem.reason}", problem.fix) if problem else None


def connect_ray(flag: str | None, num_workers: int, cpus_per_worker: float) -> None:
    """Join ``--address`` (else ``RAY_ADDRESS``), else start an embedded Ray: 127.0.0.1 only,
    token auth on.

    A process that already called ``ray.init`` (a notebook, the tests) trains on that Ray;
    ``training_address_problem`` has refused an address that names another cluster before this."""
    import ray

    if ray.is_initialized():
        return
    address = resolve_address(flag, "train").value
    if address:
        ray.init(address=address, log_to_driver=True)
        say(f"Connected to Ray cluster at {address}")
        return
    # One CPU per worker plus one for Ray Train's controller; at least what the machine has.
    num_cpus = max(os.cpu_count() or 1, int(num_workers * cpus_per_worker) + 1)
    from srgan_dist.embedded_ray import init_embedded_ray

    init_embedded_ray(num_cpus, runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}})
    say(f"Started an embedded local Ray instance ({num_cpus} CPUs, 127.0.0.1)")


def join_cluster(address: str) -> AddressProblem | None:
    """Join the cluster at ``address`` as a quiet driver (the doctor's); what stopped it, if anything."""
    import ray
    from ray.exceptions import AuthenticationError

    problem = join_problem(address)
    if problem:
        return problem
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, AuthenticationError) as error:
        return AddressProblem(
            f"cannot join Ray at {address}: {error}",
            f"pass --address HOST:PORT of the head's GCS (or auto on a cluster node); {TOKEN_FIX}",
        )
    return None


# ---------------------------------------------------------------------------------------------
# GPU or CPU, and the worker group


def use_gpu(scaling: ScalingConfig, cluster_gpus: float) -> bool:
    """``gpu``: always (training waits for them); ``auto``: when the cluster has a GPU now."""
    return scaling.accelerator == "gpu" or (scaling.accelerator == "auto" and cluster_gpus >= 1)


def workers_setting(scaling: ScalingConfig) -> int | tuple[int, int]:
    """Ray Train's ``num_workers``: a count, or ``(min, max)`` for an elastic run."""
    if scaling.min_workers:
        return (scaling.min_workers, scaling.num_workers)
    return scaling.num_workers


def fewest_workers(scaling: ScalingConfig) -> int:
    """The workers a run needs to start: all of them, or an elastic run's minimum."""
    return scaling.min_workers or scaling.num_workers


def workers_text(scaling: ScalingConfig) -> str:
    """``"4"`` or ``"2-8 (elastic)"``."""
    workers = workers_setting(scaling)
    return f"{workers[0]}-{workers[1]} (elastic)" if isinstance(workers, tuple) else str(workers)


def scaling_config(scaling: ScalingConfig, gpu: bool):
    """Ray Train's ``ScalingConfig`` for ``scaling``: one worker per GPU with ``gpu``."""
    from ray.train import ScalingConfig as RayScalingConfig

    return RayScalingConfig(
        num_workers=workers_setting(scaling),
        use_gpu=gpu,
        resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if gpu else {})},
        placement_strategy=scaling.placement_strategy,
    )


# Ray Train 2.60 (ray/train/v2/_internal/constants.py): how long one start of a worker group waits
# for its placement group before WorkerGroupStartupTimeoutError. The driver passes it on to the
# Ray Train controller (ENV_VARS_TO_PROPAGATE), which reads it when it makes each worker group.
WORKER_GROUP_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


@dataclass(frozen=True)
class StartBound:
    """How ``scaling.resource_timeout_s`` bounds each start of Ray Train's worker group.

    Ray Train 2.60 waits ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` (60 s) for a worker group's
    placement group, then raises ``WorkerGroupStartupTimeoutError``, a controller failure its
    ``DefaultFailurePolicy`` retries ``FailureConfig.controller_failure_limit`` times (-1, no
    limit, by default): a start whose resources never come free retries forever. A fixed-size run
    therefore waits ``resource_timeout_s`` once per start and fails (limit 0). An elastic run keeps
    Ray's retries: after a node is lost, the timed-out start of the old size is how it restarts on
    fewer workers (``ElasticScalingPolicy``), and its wait for ``min_workers`` is Ray's own.
    """

    environment: dict[str, str]
    controller_failure_limit: int

    @classmethod
    def of(cls, scaling: ScalingConfig) -> StartBound:
        if isinstance(workers_setting(scaling), tuple):
            return cls({}, -1)
        return cls({WORKER_GROUP_START_TIMEOUT_ENV: f"{scaling.resource_timeout_s:g}"}, 0)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The environment set for a Ray Train ``fit`` started in the block (the controller takes
        the driver's values of Ray Train's variables when it is created), then put back."""
        before = {name: os.environ.get(name) for name in self.environment}
        os.environ.update(self.environment)
        try:
            yield
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def start_timed_out(error: BaseException) -> bool:
    """Whether Ray Train failed because a worker group's resources did not come free in time."""
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return isinstance(error, ControllerError) and isinstance(
        error.controller_failure, WorkerGroupStartupTimeoutError
    )


def decide_gpu(scaling: ScalingConfig) -> bool:
    """GPU or CPU workers, said in one line with the reason; then wait until the cluster can hold
    them (``wait_for_workers``)."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    accelerator = scaling.accelerator
    count = workers_text(scaling)
    gpu = use_gpu(scaling, gpus)
    if gpu:
        why = "scaling.accelerator=gpu" if accelerator == "gpu" else f"auto: the cluster has {gpus} GPU(s)"
        say(f"Training on GPUs: {count} worker(s), 1 GPU each (NCCL) - {why}")
    else:
        why = (
            "scaling.accelerator=cpu"
            if accelerator == "cpu"
            else "auto: no GPUs in the Ray cluster now (on an autoscaling cluster whose GPU nodes "
            "start at 0, set scaling.accelerator=gpu)"
        )
        say(f"Training on CPUs: {count} worker(s), {scaling.cpus_per_worker:g} CPU each (gloo) - {why}")
    wait_for_workers(fewest_workers(scaling), gpu, scaling.cpus_per_worker, scaling.resource_timeout_s)
    return gpu


def wait_for_workers(
    needed: int, gpu: bool, cpus_per_worker: float, timeout_s: float, poll_s: float = 2.0
) -> None:
    """Ask the autoscaler for ``needed`` workers and wait until the cluster has the GPUs (one per
    worker) and CPUs they take.

    ``request_resources`` is how Ray's autoscaler learns about demand before any task asks; the
    request is withdrawn once the resources are there (Ray Train's own placement group then holds
    them). Prints a waiting line every minute; raises ``ClusterError`` after ``timeout_s``, before
    anything is started, so nothing is lost.
    """
    import ray
    from ray.autoscaler.sdk import request_resources

    kind = "GPU" if gpu else "CPU"
    per_worker = 1.0 if gpu else cpus_per_worker

    def have_now() -> float:
        return ray.cluster_resources().get(kind, 0)

    def enough(have: float) -> bool:
        return have + 1e-9 >= needed * per_worker

    if enough(have_now()):
        return
    request_resources(bundles=[{"CPU": cpus_per_worker, **({"GPU": 1} if gpu else {})}] * needed)
    started, last_said = time.monotonic(), None
    try:
        while not enough(have := have_now()):
            waited = time.monotonic() - started
            if waited >= timeout_s:
                raise ClusterError(
                    f"gave up after {waited:.0f} s waiting for {needed} {kind} worker(s): the cluster has "
                    f"{have:g} {kind}(s), they need {needed * per_worker:g}. Check the autoscaler (ray status, "
                    "the node type's max_workers and quota), raise scaling.resource_timeout_s, or use fewer "
                    "--workers. Nothing was started."
                )
            if last_said is None or time.monotonic() - last_said >= 60:
                say(
                    f"waiting for {needed} {kind} worker(s) (cluster has {have:g} {kind}(s); the autoscaler may "
                    f"be adding nodes)... {waited:.0f} s of {timeout_s:.0f} s"
                )
                last_said = time.monotonic()
            time.sleep(poll_s)
    finally:
        request_resources(bundles=[])
    say(f"{needed * per_worker:g} {kind}(s) available after {time.monotonic() - started:.0f} s")


def embedded_capacity_problem(scaling: ScalingConfig, flag: str | None) -> str | None:
    """Pre-flight for a run on the embedded local Ray (no address, no Ray in this process yet):
    every worker is a process on this machine, so a worker count beyond its cores would start
    them all anyway and thrash (1,000 workers took Ray's out-of-memory killer to stop)."""
    ray = sys.modules.get("ray")
    if resolve_address(flag, "train").value or (ray is not None and ray.is_initialized()):
        return None  # a cluster: decide_gpu waits for its resources, bounded
    cores = os.cpu_count() or 1
    if scaling.num_workers <= cores:
        return None
    return (
        f"scaling.num_workers={scaling.num_workers}: the embedded local Ray runs every worker on this "
        f"machine, which has {cores} CPU core(s); use --workers {cores} or fewer, or join a cluster "
        "with --address"
    )
