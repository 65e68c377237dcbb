"""Shared fixtures: one embedded Ray instance and one two-node local cluster per test session
(each costs tens of seconds to start; tests share them), and small generated photos."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cluster" / "local_cluster.sh"
RAY_BIN = Path(sys.executable).parent / "ray"


@pytest.fixture(scope="session", autouse=True)
def quick_ray_train_timings() -> None:
    """Ray Train's controller takes a worker's report off a one-slot queue when it polls the
    workers, every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s): a worker that reports again
    before the next poll waits for it. The tests checkpoint every 2 steps of a few milliseconds,
    so at the default most checkpoints wait up to 2 s (a 100-step test spent 92 s waiting); real
    runs checkpoint every few hundred steps and never do. Set before any Ray starts (autouse,
    session): every launch.py, job driver and cluster the tests start inherits it, and the driver
    passes it on to the controller. (A fixture, not an import-time setting: the benchmarks import
    this file for its photo helpers and must time Ray's defaults.)

    Likewise RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S: right after a node is lost Ray still counts
    its CPUs, so an elastic run first waits this long (default 60 s) for a placement group of the
    old size before it restarts on fewer workers. It bounds only the wait for the placement group,
    which takes well under a second here when the CPUs are free."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "15")


@pytest.fixture(scope="session", autouse=True)
def fault_plan_file(tmp_path_factory) -> Path:
    """Where ``srgan_dist/train/faults.py`` reads the fault plan of a test's run (see
    :func:`fault_plan`): named in the environment before any Ray starts (autouse, session), so
    every Ray worker, launch.py and job driver the tests start inherits it. No file, no faults."""
    from srgan_dist.train.faults import PLAN_ENV

    path = tmp_path_factory.getbasetemp() / "fault_plan.json"
    os.environ[PLAN_ENV] = str(path)
    return path


@contextlib.contextmanager
def fault_plan(plan: dict) -> Iterator[None]:
    """Training started in the block meets the faults of ``plan`` (``srgan_dist/train/faults.py``)."""
    from srgan_dist.train.faults import PLAN_ENV

    path = Path(os.environ[PLAN_ENV])
    path.write_text(json.dumps(plan))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Groups for ``make test``'s parallel run (pytest-xdist ``--dist loadgroup``): every test of the
    session's two-node cluster on one test worker (one cluster, one set of ports), and each other
    module's slow tests on one worker (their module fixtures, such as one trained run, are set up
    once). Unit tests go wherever a worker is free. A test's own ``xdist_group`` marker wins
    (xdist joins several group names into a new group, which would separate it from both)."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        if "two_node_cluster" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("two_node_cluster"))
        elif item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def make_photo(size: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth, photo-like uint8 HxWx3 image: blurred noise plus a few soft-edged shapes.

    Smooth structure matters: on pure noise no model beats bicubic, so the training tests could
    not tell a working model from a broken one.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 8 + 2, width // 8 + 2, 3))
    image = Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    array = np.asarray(image).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(4):
        cy, cx, radius = rng.integers(0, height), rng.integers(0, width), rng.integers(6, max(8, width // 3))
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
        array[mask] = array[mask] * 0.3 + rng.random(3) * 255 * 0.7
    stripes = 40 * np.sin(xx / rng.uniform(2.0, 6.0))[..., None]
    return np.clip(array + stripes, 0, 255).astype(np.uint8)


def write_photos(folder: Path, count: int, size: tuple[int, int] = (96, 96), seed: int = 0) -> list[Path]:
    """Write ``count`` generated PNG photos into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"photo_{seed}_{index:03d}.png"
        Image.fromarray(make_photo(size, seed * 1000 + index)).save(path)
        paths.append(path)
    return paths


def training_photos(tmp_path_factory) -> dict[str, Path]:
    """The training tests' data: 6 training photos of 64 px and 2 validation photos of 48 px."""
    root = tmp_path_factory.mktemp("photos")
    write_photos(root / "train", 6, (64, 64), seed=1)
    write_photos(root / "val", 2, (48, 48), seed=2)
    return {"train": root / "train", "val": root / "val"}


def load_bench_script(name: str):
    """``bench/<name>.py`` as a module (benches are scripts, not a package; they import
    ``bench/_report.py`` as a sibling)."""
    import importlib.util

    folder = ROOT / "bench"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_embedded_ray():
    """The tests' in-process embedded Ray (4 logical CPUs: two 2-worker runs fit side by side)."""
    import ray

    from srgan_dist.embedded_ray import init_embedded_ray

    if not ray.is_initialized():
        init_embedded_ray(num_cpus=4, log_to_driver=True)
    return ray


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole session (starting Ray costs seconds; tests share it).
    test_gpu_wait connects this process to another Ray for a while and starts this one again."""
    yield start_embedded_ray()
    import ray

    ray.shutdown()


# ---------------------------------------------------------------------------------------------
# A real two-node Ray cluster on this machine (cluster/local_cluster.sh), driven only through its
# scripts, the job server and the `srgan-dist` CLI: no in-process ray.init (other tests may hold
# an embedded Ray in this process). Ports differ from the defaults so a developer's cluster is safe;
# SRGAN_TEST_PORT_OFFSET shifts them all, so two checkouts can run the cluster tests side by side.
PORT_OFFSET = int(os.environ.get("SRGAN_TEST_PORT_OFFSET", "0"))


class LocalCluster:
    """cluster/local_cluster.sh on its own ports and temp dir."""

    def __init__(
        self,
        gcs_port: int,
        dashboard_port: int,
        auth: str = "token",
        extra_env: dict[str, str] | None = None,
    ):
        gcs_port, dashboard_port = gcs_port + PORT_OFFSET, dashboard_port + PORT_OFFSET
        self.gcs_port, self.dashboard_port = gcs_port, dashboard_port
        self.address = f"http://127.0.0.1:{dashboard_port}"
        self.gcs_address = f"127.0.0.1:{gcs_port}"
        self.tmp = f"/tmp/srgan-test-ray-{gcs_port}"
        self.env = {
            **os.environ,
            "RAY_BIN": str(RAY_BIN),
            "SRGAN_CLUSTER_GCS_PORT": str(gcs_port),
            "SRGAN_CLUSTER_DASHBOARD_PORT": str(dashboard_port),
            "SRGAN_CLUSTER_TMP": self.tmp,
            "SRGAN_CLUSTER_AUTH": auth,
            "RAY_ADDRESS": self.address,
            "RAY_AUTH_MODE": auth,
            # what `local_cluster.sh env` prints for clients that join by GCS address
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }
        if auth == "token":
            self.env["RAY_AUTH_TOKEN_PATH"] = f"{self.tmp}/auth_token"
        else:
            self.env.pop("RAY_AUTH_TOKEN_PATH", None)
        self.env.update(extra_env or {})

    def script(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """`srgan-dist ARGS` against this cluster, from the project root (the uploaded dir)."""
        return subprocess.run(
            [sys.executable, "-m", "srgan_dist.cli", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def logs(self, job_id: str) -> str:
        return self.cli("logs", job_id, timeout=60).stdout

    def follow(self, job_id: str) -> JobLog:
        """``srgan-dist logs JOB --follow`` in the background (close it when done)."""
        return JobLog(self, job_id)

    def actor_nodes(self, class_name: str, exclude: set[str] = frozenset()) -> dict[str, str]:
        """``{actor id: node id}`` of every actor of ``class_name`` (alive or dead) on this cluster,
        but those in ``exclude`` (the actor ids of an earlier call: what a job started since)."""
        result = subprocess.run(
            [
                str(RAY_BIN),
                "list",
                "actors",
                "--address",
                self.address,
                "--filter",
                f"class_name={class_name}",
                "--detail",
                "--format",
                "json",
                "--limit",
                "1000",
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        actors = json.loads(result.stdout)
        return {a["actor_id"]: a["node_id"] for a in actors if a["actor_id"] not in exclude}


@contextlib.contextmanager
def local_cluster(
    gcs_port: int, dashboard_port: int, auth: str = "token", extra_env: dict[str, str] | None = None
) -> Iterator[LocalCluster]:
    """Two nodes up for the block; torn down even when starting or a test fails. ``extra_env``
    goes to the script and the CLI (e.g. another ``RAY_BIN``)."""
    cluster = LocalCluster(gcs_port, dashboard_port, auth, extra_env)
    try:
        started = cluster.script("up")
        assert started.returncode == 0, started.stderr + started.stdout
        assert f"RAY_ADDRESS={cluster.address}" in started.stdout
        yield cluster
    finally:
        stopped = cluster.script("down", timeout=120)
        assert stopped.returncode == 0, stopped.stderr


class JobLog:
    """A job's log as ``srgan-dist logs --follow`` streams it: one process, read as lines arrive
    (polling ``srgan-dist logs`` costs a Python start and a Ray import per look)."""

    def __init__(self, cluster: LocalCluster, job_id: str) -> None:
        self.job_id = job_id
        self.text = ""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "srgan_dist.cli", "logs", job_id, "--follow"],
            env=cluster.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.text += line

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text)
            if match:
                return match
            if not self.reader.is_alive():
                break
            time.sleep(0.2)
        raise AssertionError(
            f"{pattern!r} not in the logs of {self.job_id} after {timeout}s:\n{self.text[-3000:]}"
        )

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def two_node_cluster() -> Iterator[LocalCluster]:
    """One token-authenticated two-node cluster for every test of the session that needs a healthy
    cluster (the cluster, cluster-training, doctor and network modules): starting one takes tens of
    seconds. Tests that take a node down bring it back."""
    with local_cluster(gcs_port=6590, dashboard_port=8565, auth="token") as running:
        yield running


# ---------------------------------------------------------------------------------------------
# moto's S3 server on 127.0.0.1 that counts what goes over the wire: the bytes of every object
# body it receives (PUT, multipart parts) and sends (GET), per object path. Tests of "only new
# bytes" count on the server, not in the code under test. bench/tensorboard_uploads.py uses it too.


class S3Traffic:
    """WSGI middleware around moto's app: body bytes received and sent per ``/bucket/key`` path."""

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.received: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.puts: dict[str, int] = {}

    def __call__(self, environ, start_response):
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        if method in ("PUT", "POST"):
            # aws-chunked uploads carry chunk signatures: count the object's own bytes
            length = environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH") or environ.get("CONTENT_LENGTH") or 0
            with self.lock:
                self.received[path] = self.received.get(path, 0) + int(length)
                self.puts[path] = self.puts.get(path, 0) + (method == "PUT")
        body = self.app(environ, start_response)
        if method != "GET":
            return body
        chunks = list(body)
        with self.lock:
            self.sent[path] = self.sent.get(path, 0) + sum(len(chunk) for chunk in chunks)
        return chunks

    def _total(self, table: dict[str, int], prefix: str) -> int:
        with self.lock:
            return sum(count for path, count in table.items() if path.startswith(prefix))

    def received_under(self, prefix: str) -> int:
        """Body bytes received for objects whose path starts with ``/<prefix>``."""
        return self._total(self.received, "/" + prefix)

    def sent_under(self, prefix: str) -> int:
        """Body bytes sent (GET) for objects whose path starts with ``/<prefix>``."""
        return self._total(self.sent, "/" + prefix)

    def puts_under(self, prefix: str) -> int:
        return self._total(self.puts, "/" + prefix)


def s3_test_filesystem(endpoint: str):  # -> pyarrow.fs.S3FileSystem
    """pyarrow's client for a moto server at ``endpoint`` (host:port; moto takes any credentials)."""
    import pyarrow.fs

    return pyarrow.fs.S3FileSystem(
        endpoint_override=endpoint,
        scheme="http",
        access_key="test",
        secret_key="test",
        allow_bucket_creation=True,
    )


class CountingS3Server:
    """moto's S3 app behind :class:`S3Traffic`, served by werkzeug on a thread (as moto's
    ``ThreadedMotoServer`` serves it) on 127.0.0.1 and a free port."""

    def __init__(self, bucket: str) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self.bucket = bucket
        self.traffic = S3Traffic(DomainDispatcherApplication(create_backend_app))
        self.server = make_server(
            "127.0.0.1", 0, self.traffic, threaded=True, request_handler=MotoRequestHandler
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"127.0.0.1:{self.server.server_port}"
        self.filesystem().create_dir(bucket)

    def uri(self, path: str) -> str:
        """``s3://<bucket>/<path>`` on this server, the endpoint in the URI (no environment needed)."""
        return f"s3://{self.bucket}/{path}?endpoint_override={self.endpoint}&scheme=http"

    def filesystem(self):  # -> pyarrow.fs.S3FileSystem
        return s3_test_filesystem(self.endpoint)

    def sizes(self, prefix: str) -> dict[str, int]:
        """``{key relative to <bucket>/<prefix>: size}`` of every object under it."""
        import pyarrow.fs

        base = f"{self.bucket}/{prefix.strip('/')}"
        selector = pyarrow.fs.FileSelector(base, recursive=True, allow_not_found=True)
        return {
            info.path.removeprefix(base + "/"): info.size
            for info in self.filesystem().get_file_info(selector)
            if info.type == pyarrow.fs.FileType.File
        }

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join()


@pytest.fixture(scope="session")
def counting_s3() -> Iterator[CountingS3Server]:
    """One counting S3 server for the session (bucket ``counted``; it takes any credentials)."""
    server = CountingS3Server("counted")
    yield server
    server.stop()
