"""TensorBoard of a run in cloud storage: rank 0's uploads stay the size of what it wrote, and
``srgan-dist tensorboard s3://...`` follows the run live, reading only bytes it does not have.

Bytes are counted by the S3 server itself (``conftest.counting_s3``: moto's, in this process).
The monitor is driven directly with many small writes: the same calls the trainer makes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from srgan_dist import storage
from srgan_dist.commands.tensorboard import EventsMirror
from srgan_dist.monitor import Monitor
from srgan_dist.rundir import RunDir

pytestmark = pytest.mark.slow
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch) -> dict[str, str]:
    """This test's working copies in a fresh cache, and credentials the server takes."""
    env = {**CREDENTIALS, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def cloud_monitor(run_dir: RunDir, stage: str, upload_interval_s: float, start_step: int = 0) -> Monitor:
    log_dir = run_dir.tensorboard(stage)
    log_dir.mkdir(parents=True, exist_ok=True)
    return Monitor(
        log_dir, stage, 10_000, start_step, upload=run_dir.push, upload_interval_s=upload_interval_s
    )


def log_steps(monitor: Monitor, steps: range, pause_s: float = 0.0) -> None:
    """What the trainer logs per log step: a dozen scalars, one flush."""
    for step in steps:
        monitor.scalars(step, {f"loss/term{i}": 1.0 / step + i for i in range(12)})
        time.sleep(pause_s)


def steps_of(log_dir: Path, tag: str) -> list[int]:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


def test_tensorboard_uploads_stay_the_size_of_the_folder(counting_s3):
    prefix = "uploads/run"
    run_dir = RunDir.at(counting_s3.uri(prefix))
    tb_prefix = f"{counting_s3.bucket}/{prefix}/tensorboard/"

    # Writes never upload before upload_interval_s has passed: only upload_events() does.
    held = cloud_monitor(run_dir, "srgan", upload_interval_s=3600)
    log_steps(held, range(1, 51))
    assert counting_s3.traffic.puts_under(tb_prefix) == 0
    held.upload_events()
    assert counting_s3.traffic.puts_under(tb_prefix) == 1  # one file, once
    held.close()

    # Many small flushes for ~3.5 s with a 1 s interval, a validation (image grid, scalars,
    # upload) every 60 steps and a checkpoint upload right after it, as the trainer does.
    monitor = cloud_monitor(run_dir, "srresnet", upload_interval_s=1.0)
    grid = torch.rand(3, 64, 192, generator=torch.Generator().manual_seed(0))
    for start in range(1, 421, 60):
        log_steps(monitor, range(start, start + 60), pause_s=0.008)
        step = start + 59
        monitor.images(step, "val/bicubic_sr_hr", grid)
        monitor.scalars(step, {"val/psnr": 30.0, "val/psnr_bicubic": 29.0})
        monitor.upload_events()  # validation
        monitor.upload_events()  # checkpoint
    monitor.hparams({"stage": "srresnet"}, {"val_psnr": 30.0})
    monitor.close()

    final = counting_s3.sizes(f"{prefix}/tensorboard")
    uploaded = counting_s3.traffic.received_under(tb_prefix)
    folder_bytes = sum(final.values())
    print(f"uploaded {uploaded} B for a final tensorboard/ of {folder_bytes} B in {len(final)} files")
    assert folder_bytes > 7 * 20_000  # the seven image grids are in it
    assert uploaded <= 1.5 * folder_bytes
    assert len([key for key in final if key.startswith("srresnet/")]) >= 3  # files were rotated
    # What is in the bucket is what rank 0 wrote, and TensorBoard reads every step back from it.
    for relative, size in final.items():
        assert (run_dir.tensorboard_root / relative).stat().st_size == size, relative
    mirror = EventsMirror(run_dir.location)
    mirror.sync()
    assert steps_of(mirror.folder / "srresnet", "loss/term0") == list(range(1, 421))
    assert steps_of(mirror.folder / "srresnet", "val/psnr") == list(range(60, 421, 60))


def test_a_mirror_reads_only_the_new_bytes_of_a_growing_object(counting_s3, tmp_path):
    prefix = "follow/run/tensorboard"
    fs = counting_s3.filesystem()
    key = f"{counting_s3.bucket}/{prefix}/srresnet/events.out.tfevents.1"
    first, more = os.urandom(50_000), os.urandom(20_000)

    def put(data: bytes) -> None:
        with fs.open_output_stream(key) as stream:
            stream.write(data)

    put(first)
    local, held = tmp_path / "copy", {}
    sent_before = counting_s3.traffic.sent_under(counting_s3.bucket + "/follow/")
    assert storage.follow_folder(counting_s3.uri(prefix), local, held) == 50_000
    assert storage.follow_folder(counting_s3.uri(prefix), local, held) == 0  # nothing new: no GET
    put(first + more)
    assert storage.follow_folder(counting_s3.uri(prefix), local, held) == 20_000
    target = local / "srresnet" / "events.out.tfevents.1"
    assert target.read_bytes() == first + more
    assert counting_s3.traffic.sent_under(counting_s3.bucket + "/follow/") - sent_before == 70_000
    # A later process starts from the copy on disk: only the new bytes again.
    put(first + more + b"tail")
    assert storage.follow_folder(counting_s3.uri(prefix), local, {}) == 4
    assert target.read_bytes() == first + more + b"tail"
    # An object that got shorter was replaced: downloaded whole, renamed into place.
    put(b"replaced")
    assert storage.follow_folder(counting_s3.uri(prefix), local, held) == 8
    assert target.read_bytes() == b"replaced"
    # A symlink planted in the copy is replaced, never appended through.
    victim = tmp_path / "victim"
    victim.write_bytes(b"replaced")
    target.unlink()
    target.symlink_to(victim)
    put(b"replaced and more")
    storage.follow_folder(counting_s3.uri(prefix), local, {})
    assert victim.read_bytes() == b"replaced" and not target.is_symlink()
    assert target.read_bytes() == b"replaced and more"
    assert list((local / storage.INCOMING_DIR).iterdir()) == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scalar_steps(port: int, run: str, tag: str) -> list[int] | None:
    """The steps TensorBoard's HTTP API serves for ``run``/``tag`` (None while it has none)."""
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run={run}&tag={tag}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return [int(step) for _, step, _ in json.loads(response.read())]
    except OSError:  # not serving yet, or no such run/tag yet (HTTP 400)
        return None


def wait_for_steps(port: int, run: str, tag: str, steps: list[int], timeout_s: float, command) -> float:
    """Seconds until TensorBoard serves exactly ``steps``; fails after ``timeout_s``."""
    started = time.monotonic()
    seen = None
    while time.monotonic() - started < timeout_s:
        assert command.poll() is None, command.stdout.read()
        seen = scalar_steps(port, run, tag)
        if seen == steps:
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"{run}/{tag}: TensorBoard served {seen} after {timeout_s}s, not {steps}")


def test_tensorboard_follows_a_run_in_the_bucket_live(counting_s3, environment, tmp_path):
    prefix = "live/run"
    run_dir = RunDir.at(counting_s3.uri(prefix))
    monitor = cloud_monitor(run_dir, "srresnet", upload_interval_s=3600)
    log_steps(monitor, range(1, 6))
    monitor.upload_events()
    port = free_port()
    cli = [sys.executable, "-m", "srgan_dist.cli", "tensorboard", run_dir.location]
    command = subprocess.Popen(
        [*cli, "--port", str(port), "--sync-interval", "1"],
        # Another machine's cache: all the command knows of the run comes from the bucket.
        env={**os.environ, **environment, "XDG_CACHE_HOME": str(tmp_path / "viewer-cache")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_steps(port, "srresnet", "loss/term0", [1, 2, 3, 4, 5], 120, command)
        # The run goes on: more steps, then the next stage's first events.
        log_steps(monitor, range(6, 11))
        monitor.upload_events()
        monitor.close()
        srgan = cloud_monitor(run_dir, "srgan", upload_interval_s=3600)
        log_steps(srgan, range(1, 4))
        srgan.close()
        waited = wait_for_steps(port, "srresnet", "loss/term0", list(range(1, 11)), 30, command)
        waited += wait_for_steps(port, "srgan", "loss/term0", [1, 2, 3], 30 - waited, command)
        print(f"new events served {waited:.1f}s after they were uploaded")
    finally:
        command.terminate()
        output = command.communicate(timeout=30)[0]
    assert f"Following {run_dir.location.replace('?', '/tensorboard?', 1)}" in output, output
    # Each byte of the run's events crossed the wire to the command once, however often it looked.
    folder_bytes = sum(counting_s3.sizes(f"{prefix}/tensorboard").values())
    assert 0 < counting_s3.traffic.sent_under(f"{counting_s3.bucket}/{prefix}/tensorboard/") <= folder_bytes
