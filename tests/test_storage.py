"""Runs in cloud storage, against a real S3-compatible server on 127.0.0.1 (moto's server, in this
process, over HTTP; pyarrow talks to it as to any S3 endpoint).

One two-stage run (a driver process with its own embedded Ray, 2 workers, one of which dies once)
writes to ``s3://runs/...`` with the endpoint from ``AWS_ENDPOINT_URL``; the tests that only read
it share it. The storage-outage test names the endpoint in the URI
(``?endpoint_override=...&scheme=http``) instead, and the bad-storage test runs in this process:
the session's Ray workers do not see environment variables set after they started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import pytest
import yaml
from conftest import fault_plan, s3_test_filesystem, training_photos
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from test_training import RAY_NOISE, ROOT, scalars, tiny_config, tiny_overrides

from srgan_dist import cli, jobs, storage
from srgan_dist.commands.tensorboard import download_events
from srgan_dist.config import ConfigError, to_dict
from srgan_dist.driver import RunError, forget_ray_checkpoint_list, run_training
from srgan_dist.rundir import RunDir
from srgan_dist.storage import StorageError
from srgan_dist.train import checkpoint as ckpt

pytestmark = pytest.mark.slow
BUCKET = "runs"
# What the shared run's environment holds as its secret: it must never reach a file of the run.
# Made at run time: a literal would be found in the uploaded copy of this file.
SECRET = f"not-a-real-secret-{uuid.uuid4().hex}"


def test_uris_are_checked_and_joined_before_the_query():
    uri = "s3://runs/prefix?endpoint_override=127.0.0.1:9000&scheme=http"
    assert (
        storage.join(uri, "demo", "train.log")
        == "s3://runs/prefix/demo/train.log?endpoint_override=127.0.0.1:9000&scheme=http"
    )
    assert storage.parent(storage.join(uri, "demo")) == uri
    assert storage.name_of(storage.join(uri, "demo")) == "demo"
    assert jobs.run_log_location(storage.join(uri, "demo")) == storage.join(uri, "demo", "train.log")
    assert jobs.check_storage(uri) == uri
    for bad, message in (
        ("ftp://host/runs", "run.storage: 'ftp://host/runs' is a ftp:// URI"),
        ("s3:///runs", "names no bucket"),
        ("s3://runs/x?access_key=AKIA&secret_key=abc", r"carries credentials \(access_key, secret_key\)"),
    ):
        with pytest.raises(ConfigError, match=message):
            tiny_config({"train": Path("/t"), "val": Path("/v")}, Path("/unused"), "x", f"run.storage={bad}")
    with pytest.raises(jobs.JobError, match=r"--storage: the URI carries credentials \(session_token\)"):
        jobs.check_storage("s3://runs/x?session_token=abc")


@dataclass
class S3Server:
    """moto's S3 server on 127.0.0.1 (its objects live in this process, so a restart keeps them)."""

    host: str
    port: int
    server: Any

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server stopped (its objects kept), then started again on the same port."""
        from moto.server import ThreadedMotoServer

        self.server.stop()
        try:
            yield
        finally:
            self.server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
            self.server.start()

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def uri(self, path: str, bucket: str = BUCKET) -> str:
        """``s3://<bucket>/<path>`` on this server, the endpoint in the URI (no environment needed)."""
        return f"s3://{bucket}/{path}?endpoint_override={self.endpoint}&scheme=http"

    def filesystem(self) -> pyarrow.fs.S3FileSystem:
        return s3_test_filesystem(self.endpoint)

    def keys(self, prefix: str) -> set[str]:
        """Every object under ``<bucket>/<prefix>``, relative to it."""
        selector = pyarrow.fs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)
        return {
            info.path.removeprefix(f"{BUCKET}/{prefix}/")
            for info in self.filesystem().get_file_info(selector)
            if info.type == pyarrow.fs.FileType.File
        }

    @contextlib.contextmanager
    def authentication(self) -> Iterator[None]:
        """Check every request's credentials against the server's IAM users (none: all fail)."""

        def set_free_requests(count: str) -> None:
            url = f"http://{self.endpoint}/moto-api/reset-auth"
            headers = {"Content-Type": "text/plain"}  # moto reads the raw body
            urllib.request.urlopen(urllib.request.Request(url, count.encode(), headers, method="POST")).read()

        set_free_requests("0")
        try:
            yield
        finally:
            set_free_requests("inf")

    def read(self, key: str) -> bytes:
        with self.filesystem().open_input_stream(f"{BUCKET}/{key}") as stream:
            return stream.read()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    running = S3Server(host, port, server)
    running.filesystem().create_dir(BUCKET)  # a bucket (moto allows creating it)
    yield running
    running.server.stop()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    return training_photos(tmp_path_factory)


def bucket_photos(server: S3Server, photos: dict[str, Path]) -> dict[str, str]:
    """``photos`` uploaded to ``s3://runs/data/``: the runs here train on data in the bucket (the
    endpoint comes from the environment, as on AWS or MinIO)."""
    for split in ("train", "val"):
        for file in sorted(photos[split].iterdir()):
            with server.filesystem().open_output_stream(f"{BUCKET}/data/{split}/{file.name}") as stream:
                stream.write(file.read_bytes())
    return {split: f"s3://{BUCKET}/data/{split}" for split in ("train", "val")}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    """Each test's working copies in a fresh cache: whatever it reads comes from the server."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture(scope="module")
def cloud_run(s3_server, photos, tmp_path_factory) -> dict:
    """Both stages on 2 workers, storage ``s3://runs/shared`` and the endpoint and credentials in
    the environment, as a user on AWS or MinIO sets them; the driver in a process of its own (its
    own embedded Ray). A worker dies once at srresnet step 5: Ray Train restarts the group from the
    step-3 checkpoint in the bucket."""
    storage_uri = f"s3://{BUCKET}/shared"
    marker = tmp_path_factory.mktemp("died") / "died-once"
    hooks = {"die": {"stage": "srresnet", "step": 5, "rank": 1, "marker": str(marker)}}
    overrides = tiny_overrides(
        bucket_photos(s3_server, photos),
        Path("unused"),
        "full",
        "srgan.lr=1e-12",
        "srresnet.checkpoint_interval=3",
    )
    overrides = [o for o in overrides if not o.startswith("run.storage=")] + [f"run.storage={storage_uri}"]
    env = {
        "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("launch-cache")),
        "AWS_ENDPOINT_URL": f"http://{s3_server.endpoint}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": SECRET,
    }
    with fault_plan(hooks):
        code, stdout, stderr, ray_files_with_secret = run_driver(overrides, env)
    assert code == 0, stdout[-4000:] + stderr[-4000:]
    assert marker.exists()  # the worker really died
    return {
        "uri": f"{storage_uri}/full",
        "prefix": "shared/full",
        "stdout": stdout,
        "stderr": stderr,
        "env": env,
        "ray_files_with_secret": ray_files_with_secret,
        "working_copy": Path(env["XDG_CACHE_HOME"]),
    }


@pytest.fixture
def endpoint_env(s3_server, monkeypatch) -> None:
    """This process reaches the server as the shared run did: through the environment."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3_server.endpoint}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_a_two_stage_run_writes_its_whole_run_directory_to_the_bucket(s3_server, cloud_run):
    keys = s3_server.keys(cloud_run["prefix"])
    for key in (
        "config.yaml",
        "summary.json",
        "train.log",
        "generator_srresnet.safetensors",
        "generator_srresnet.json",
        "generator_srgan.safetensors",
        "generator_srgan.json",
    ):
        assert key in keys, key
    for stage, steps in (("srresnet", 6), ("srgan", 4)):
        assert any(key.startswith(f"tensorboard/{stage}/events.out.tfevents.") for key in keys), stage
        assert f"full-{stage}/step-{steps:08d}/manifest.json" in keys  # Ray Train's checkpoints
        assert f"full-{stage}/step-{steps:08d}/state.pt" in keys
    assert not any(key.endswith((".tmp", ".part", storage.WRITE_CHECK_FILE)) for key in keys), keys
    for stage in ("srresnet", "srgan"):  # the console names where the generator really is
        assert (
            f"Stage {stage}: done, exported {cloud_run['uri']}/generator_{stage}.safetensors"
            in cloud_run["stdout"]
        )

    summary = json.loads(s3_server.read(f"{cloud_run['prefix']}/summary.json"))
    assert summary["run"] == {"name": "full", "run_dir": cloud_run["uri"]}
    assert summary["stages"]["srgan"]["steps"] == 4 and summary["stages"]["srgan"]["workers"] == 2
    saved = yaml.safe_load(s3_server.read(f"{cloud_run['prefix']}/config.yaml"))
    assert saved["run"]["storage"] == "s3://runs/shared"
    assert saved["data"]["train"] == f"s3://{BUCKET}/data/train" and saved["data"]["loader"] == "dali"
    assert "Data: 6 training image(s), 2 validation image(s)" in cloud_run["stdout"], s3_server.keys("data")
    # The console names the URI; the credentials are nowhere in what the run wrote.
    assert f"Run directory: {cloud_run['uri']}" in cloud_run["stdout"].splitlines()
    assert f"TensorBoard:   srgan-dist tensorboard {cloud_run['uri']}" in cloud_run["stdout"]
    # Nowhere: not in any object of the run, its local working copy, the console, or the files of
    # the driver's Ray session (its logs included).
    for key in s3_server.keys(cloud_run["prefix"]):
        assert SECRET.encode() not in s3_server.read(f"{cloud_run['prefix']}/{key}"), key
    assert files_holding(cloud_run["working_copy"], SECRET) == []
    assert SECRET not in cloud_run["stdout"] + cloud_run["stderr"]
    assert cloud_run["ray_files_with_secret"] == []
    assert "[srgan] step 4/4" in s3_server.read(f"{cloud_run['prefix']}/train.log").decode()


def test_upscale_evaluate_and_export_read_the_weights_from_the_uri(
    cloud_run, photos, tmp_path, endpoint_env, own_cache, capsys
):
    out = tmp_path / "upscaled"
    assert (
        cli.main(
            ["upscale", "--weights", cloud_run["uri"], "--input", str(photos["val"]), "--output", str(out)]
        )
        == 0
    )
    assert len(list(out.glob("*.png"))) == 2
    report = tmp_path / "eval.json"
    generator_uri = f"{cloud_run['uri']}/generator_srresnet.safetensors"
    assert (
        cli.main(["evaluate", "--weights", generator_uri, "--hr", str(photos["val"]), "--json", str(report)])
        == 0
    )
    assert len(json.loads(report.read_text())["images"]) == 2
    exported = tmp_path / "g.safetensors"
    code = cli.main(
        ["export", "--weights", cloud_run["uri"], "--format", "safetensors", "--output", str(exported)]
    )
    assert code == 0 and exported.is_file(), capsys.readouterr()
    # What was read is this machine's working copy of the run, fetched from the bucket.
    assert (
        own_cache / "srgan-dist" / "runs" / "s3" / BUCKET / "shared" / "full" / "generator_srgan.safetensors"
    ).is_file()
    # A run directory that is not there is a one-line error naming it.
    capsys.readouterr()
    assert cli.main(["export", "--weights", f"s3://{BUCKET}/nothing/here", "--format", "safetensors"]) == 2
    assert f"--weights s3://{BUCKET}/nothing/here: no such file or run directory" in capsys.readouterr().err


def test_tensorboard_events_are_readable_from_the_uri(cloud_run, endpoint_env):
    logdir = download_events(cloud_run["uri"])  # both attempts, each in several files
    events = scalars(logdir / "srresnet")
    assert [e.step for e in events.Scalars("loss/content")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("val/psnr")] == [3, 6]
    assert len(scalars(logdir / "srgan").Scalars("loss/adversarial")) == 4


def test_a_driver_rerun_reads_the_run_from_the_bucket(cloud_run, photos, endpoint_env, capsys):
    cfg = tiny_config(photos, Path("unused"), "full", "srgan.lr=1e-12", "run.storage=s3://runs/shared")
    # With --resume: both stages are finished there, so nothing is trained (and no Ray started).
    summary = run_training(cfg, resume=True)
    assert summary["stages"]["srgan"]["steps"] == 4
    assert "Stage srgan: already finished, skipping (generator_srgan.safetensors)" in capsys.readouterr().out
    # Without --resume: the bucket already holds this run (this machine's cache is empty).
    with pytest.raises(RunError, match=r"already holds a run\. Pass --resume"):
        run_training(cfg)


# run_training in a process of its own (its own embedded Ray, whose workers get that process's
# environment, the fault plan's variable included: the session's Ray started before the
# credentials were set).
DRIVER = """
import json, sys
from srgan_dist.config import load_config
from srgan_dist.driver import run_training
summary = run_training(load_config("configs/demo.yaml", json.loads(sys.argv[1])))
print("STAGES " + json.dumps(summary["stages"]))
"""


def driver_process(overrides: list[str], env: dict[str, str], ray_tmp: str) -> subprocess.Popen:
    """The driver with ``env`` (``XDG_CACHE_HOME`` and the credentials) over this environment."""
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        "RAY_TMPDIR": ray_tmp,
        "AWS_DEFAULT_REGION": "us-east-1",
        **env,
    }
    command = [sys.executable, "-c", DRIVER, json.dumps(overrides)]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_driver(overrides: list[str], env: dict[str, str]) -> tuple[int, str, str, list[str]]:
    """Run the driver to its end: exit code, stdout, stderr, and the files of its Ray session
    (logs included) that hold the environment's AWS secret."""
    ray_tmp = tempfile.mkdtemp(prefix="srgan-ray-", dir="/tmp")
    try:
        process = driver_process(overrides, env, ray_tmp)
        stdout, stderr = process.communicate(timeout=900)
        return process.returncode, stdout, stderr, files_holding(Path(ray_tmp), SECRET)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def files_holding(folder: Path, text: str) -> list[str]:
    """Every file under ``folder`` whose bytes contain ``text``."""
    found = []
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):  # sockets, files Ray removed meanwhile
            if path.is_file() and not path.is_symlink() and text.encode() in path.read_bytes():
                found.append(str(path))
    return found


def test_a_dying_worker_resumed_from_the_checkpoint_in_the_bucket(s3_server, cloud_run, endpoint_env):
    assert "[srresnet] resumed from checkpoint at step 3/6 on 2 worker(s)" in cloud_run["stdout"]
    keys = s3_server.keys(cloud_run["prefix"])
    assert {"full-srresnet/step-00000003/manifest.json", "full-srresnet/step-00000006/manifest.json"} <= keys
    # Both attempts' TensorBoard events are in the bucket, each uploaded up to its last log step.
    logdir = download_events(cloud_run["uri"])
    assert steps_per_process(logdir / "srresnet", "loss/content") == [[1, 2, 3, 4], [4, 5, 6]]

    # Ray's list of reported checkpoints lives at the run's root in the bucket; it is removed
    # before a run starts (each stage prunes its own folder, so the list goes stale), and no
    # checkpoint is touched.
    assert "checkpoint_manager_snapshot.json" in keys
    forget_ray_checkpoint_list(RunDir.at(cloud_run["uri"]))
    keys = s3_server.keys(cloud_run["prefix"])
    assert "checkpoint_manager_snapshot.json" not in keys
    assert "full-srresnet/step-00000006/manifest.json" in keys


def steps_per_process(log_dir: Path, tag: str) -> list[list[int]]:
    """Steps logged for ``tag`` by each process that wrote into ``log_dir`` (one per attempt: Ray
    Train restarts a worker group in new processes), in the order TensorBoard reads the files. A
    run in cloud storage writes a new file at each upload, named
    ``events.out.tfevents.<second>.<host>.<pid>.<n>``."""
    steps: dict[str, list[int]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        pid = path.name.rsplit(".", 2)[1]
        for event in EventFileLoader(str(path)).Load():
            steps.setdefault(pid, []).extend(event.step for value in event.summary.value if value.tag == tag)
    return [found for found in steps.values() if found]


def checkpoint_uploaded(server: S3Server, prefix: str) -> bool:
    """True once the checkpoint folder at ``<bucket>/<prefix>`` holds its manifest and every file
    a manifest lists (``ckpt.MANIFEST_FILES``, what ``save_checkpoint`` writes)."""
    return {ckpt.MANIFEST_FILE, *ckpt.MANIFEST_FILES} <= server.keys(prefix)


def test_storage_going_down_mid_run_stops_the_stage_and_keeps_the_last_checkpoint(
    s3_server, photos, tmp_path
):
    storage_uri = s3_server.uri("outage")
    overrides = tiny_overrides(
        photos, tmp_path, "outage", "train.stages=[srresnet]", "train.max_failures=0",
        "srresnet.iterations=400", "srresnet.checkpoint_interval=2", "srresnet.val_interval=1000",
        f"run.storage={storage_uri}",
    )  # fmt: skip
    ray_tmp = tempfile.mkdtemp(prefix="srgan-ray-", dir="/tmp")
    env = {
        "XDG_CACHE_HOME": str(tmp_path / "driver-cache"),
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    process = driver_process(overrides, env, ray_tmp)
    try:
        deadline = time.monotonic() + 600
        # Ray uploads a checkpoint's files in no fixed order (the manifest may land first), so
        # wait until every file of step 4 is in the bucket: that checkpoint must survive.
        while not checkpoint_uploaded(s3_server, "outage/outage/outage-srresnet/step-00000004"):
            assert process.poll() is None, "".join(process.communicate())[-4000:]
            assert time.monotonic() < deadline, "no complete checkpoint in the bucket after 600 s"
            time.sleep(0.2)
        with s3_server.down():
            stdout, stderr = process.communicate(timeout=600)
    finally:
        process.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)

    # One clear stop: the stage, the worker, and which upload to which URI failed, and why.
    assert process.returncode == 1, stdout[-3000:] + stderr[-3000:]
    assert "RunError: stage srresnet failed (train.max_failures=0 restart(s) allowed)" in stderr
    # Whichever upload meets the outage first (rank 0's TensorBoard events, Ray Train's checkpoint
    # or its run snapshot) is named, with the storage's own words for what went wrong.
    message = stderr[stderr.index("RunError: stage srresnet failed") :]
    assert re.search(
        r"(s3://runs/outage/outage/|key 'outage/outage/).*Could not connect to server", message
    ), message
    # The newest complete checkpoint in the bucket verifies and loads (a half-uploaded newer one
    # has no manifest, or files that disagree with it, and is skipped).
    point = ckpt.load_newest_good(storage.join(storage_uri, "outage", "outage-srresnet"), "srresnet")
    assert point is not None and point.state["step"] >= 4


def test_bad_storage_stops_the_run_before_any_worker_starts(s3_server, photos, tmp_path, monkeypatch):
    def config(storage_uri: str):
        return tiny_config(photos, tmp_path, "bad", f"run.storage={storage_uri}")

    missing_bucket = s3_server.uri("runs", bucket="no-such-bucket")
    with pytest.raises(
        StorageError,
        match=r"checking the bucket of s3://no-such-bucket/runs/bad\?.* bucket 'no-such-bucket' does not exist",
    ):
        run_training(config(missing_bucket))

    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    server_down = f"s3://{BUCKET}/runs?endpoint_override=127.0.0.1:{closed_port}&scheme=http"
    with pytest.raises(
        StorageError, match=r"checking the bucket of s3://runs/runs/bad\?.* failed: .*connect"
    ):
        run_training(config(server_down))

    # Wrong credentials: the server checks them (moto's IAM authentication, switched on here).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with (
        s3_server.authentication(),
        pytest.raises(
            StorageError,
            match=r"s3://runs/creds/bad\?.* failed: .*ACCESS_DENIED.*\(check the credentials in the environment",
        ),
    ):
        run_training(config(s3_server.uri("creds")))
    assert not s3_server.keys("creds")  # nothing was written

    # Credentials in the URI would be written into config.yaml: refused, naming the key.
    with pytest.raises(ConfigError, match=r"run.storage: the URI carries credentials \(secret_key\)"):
        config(s3_server.uri("runs") + "&secret_key=abc")


def test_a_two_stage_job_spreads_over_both_nodes_and_trains_into_the_bucket(
    two_node_cluster, s3_server, photos, tmp_path
):
    """``srgan-dist submit --storage s3://... --workers 2 --wait`` with SPREAD placement: a worker on
    each node; the job's driver and its workers reach the bucket with the credentials the job is
    given (a real cluster's nodes have their own); the followed log is the driver's console."""
    # Data in the bucket too, read by the PIL loader through a node-local cache (data.cache_dir).
    cfg = tiny_config(
        bucket_photos(s3_server, photos), tmp_path, "job", "scaling.placement_strategy=SPREAD",
        "data.loader=pil", f"data.cache_dir={tmp_path / 'node-cache'}",
    )  # fmt: skip
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    storage_uri = f"s3://{BUCKET}/cluster"
    # The nodes read the credentials from a file on them (a real cluster: node roles, or a mounted
    # secret); a secret handed through --env would be written into Ray's logs, so it is refused.
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(f"[default]\naws_access_key_id = test\naws_secret_access_key = {SECRET}\n")
    env = [f"AWS_ENDPOINT_URL=http://{s3_server.endpoint}", f"AWS_SHARED_CREDENTIALS_FILE={credentials}"]
    workers_before = two_node_cluster.actor_nodes("RayTrainWorker")  # earlier jobs' (other node ids)
    result = two_node_cluster.cli(
        "submit", "--config", str(config), "--name", "job", "--storage", storage_uri, "--workers", "2",
        *(f"--env={pair}" for pair in env), "--env=AWS_DEFAULT_REGION=us-east-1", "--wait",
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"run dir:      {storage_uri}/job" in result.stdout
    assert f"srgan-dist tensorboard {storage_uri}/job" in result.stdout
    # The followed job log is the driver's console: progress, no Ray chatter; that is in train.log.
    assert "[srresnet] step 6/6 (100%)" in result.stdout and "[srgan] step 4/4 (100%)" in result.stdout
    assert "Validation PSNR / SSIM" in result.stdout
    assert not [noise for noise in RAY_NOISE if noise in result.stdout]
    assert "Reporting training result" in s3_server.read("cluster/job/train.log").decode()
    workers = two_node_cluster.actor_nodes("RayTrainWorker", exclude=set(workers_before))
    assert len(set(workers.values())) == 2, workers  # SPREAD: this job's workers, one on each node
    assert files_holding(Path(two_node_cluster.tmp), SECRET) == []  # Ray's logs on both nodes

    keys = s3_server.keys("cluster/job")
    for key in (
        "config.yaml",
        "summary.json",
        "train.log",
        "generator_srresnet.safetensors",
        "generator_srgan.safetensors",
        "job-srresnet/step-00000006/manifest.json",
        "job-srgan/step-00000004/manifest.json",
    ):
        assert key in keys, key
    for stage in ("srresnet", "srgan"):
        assert any(key.startswith(f"tensorboard/{stage}/events.out.tfevents.") for key in keys), stage
    summary = json.loads(s3_server.read("cluster/job/summary.json"))
    assert summary["stages"]["srresnet"]["workers"] == 2 and summary["stages"]["srgan"]["steps"] == 4
    assert len(list((tmp_path / "node-cache").rglob("*.png"))) == 6  # each training object, once
