"""One driver per run: the run lock on a local folder and in an S3 bucket (moto's server on
127.0.0.1, in this process)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_storage import BUCKET, s3_server  # noqa: F401 - the module's S3 server fixture

from srgan_dist.run_lock import LOCK_FILE, Holder, RunLock, RunLocked
from srgan_dist.rundir import RunDir


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return s3_server


def run_dirs(kind: str, tmp_path: Path, s3_server, name: str) -> RunDir:  # noqa: F811
    if kind == "local":
        return RunDir.of(str(tmp_path / "runs"), name)
    return RunDir.at(s3_server.uri(f"locks/{name}"))


@pytest.fixture(params=["local", "s3"])
def run_dir(request, tmp_path) -> RunDir:
    if request.param == "local":
        return RunDir.of(str(tmp_path / "runs"), "run")
    server = request.getfixturevalue("s3_env")
    return RunDir.at(server.uri(f"locks/{request.node.name.replace('[', '-').rstrip(']')}"))


def test_a_second_driver_is_refused_naming_the_holder_until_the_first_releases(run_dir):
    first, second = RunLock(run_dir), RunLock(run_dir)
    first.acquire()
    try:
        with pytest.raises(RunLocked, match=rf"in use by another driver \(pid {os.getpid()} on ") as info:
            second.acquire()
        assert "\n" not in str(info.value)
    finally:
        first.release()
    with second:  # released: free again
        pass


@pytest.mark.parametrize("stale_lock_first", [False, True])
def test_drivers_started_at_the_same_moment_get_one_lock(run_dir, stale_lock_first):
    if stale_lock_first:  # a dead driver's lock: every racer finds it stale, one takes over
        RunLock(run_dir)._lock.acquire(Holder("another-host", 1, "2026-01-01T00:00:00+00:00", "dead"))
        time.sleep(3.2)  # older than the racers' lease (S3 counts whole seconds)
    locks = [RunLock(run_dir, lease_s=3.0) for _ in range(6)]
    won, refused = [], []
    start = threading.Barrier(len(locks))

    def take(lock: RunLock) -> None:
        start.wait()
        try:
            lock.acquire()
            won.append(lock)
        except RunLocked:
            refused.append(lock)

    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(refused) == len(locks) - 1
    won[0].release()


def test_the_heartbeat_keeps_a_live_lock_past_its_lease(run_dir):
    with RunLock(run_dir, lease_s=2.0, heartbeat_s=0.3):
        time.sleep(3.0)
        with pytest.raises(RunLocked):
            RunLock(run_dir, lease_s=2.0).acquire()


def test_a_dead_drivers_lock_expires_with_its_lease(run_dir):
    # S3 measures the age in whole seconds (Date and Last-Modified): a lease of a few seconds.
    dead = RunLock(run_dir, lease_s=3.0, heartbeat_s=60)
    dead.me = Holder("another-host", 1, "2026-01-01T00:00:00+00:00", "dead")  # not checkable here
    dead._lock.acquire(dead.me)  # taken, then its driver died: never refreshed, never released
    with pytest.raises(RunLocked, match="another-host"):
        RunLock(run_dir, lease_s=3.0).acquire()
    time.sleep(4.5)
    with RunLock(run_dir, lease_s=3.0):
        pass


def test_a_killed_driver_on_this_machine_frees_the_run_at_once(tmp_path):
    run_dir = RunDir.of(str(tmp_path / "runs"), "run")
    code = (
        "import os, sys; from srgan_dist.run_lock import RunLock; from srgan_dist.rundir import RunDir; "
        f"RunLock(RunDir.of({str(tmp_path / 'runs')!r}, 'run')).acquire(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (run_dir.root / LOCK_FILE).is_file()  # never released
    with RunLock(run_dir):  # its pid is gone: no need to wait for the lease
        pass
    assert not (run_dir.root / LOCK_FILE).exists()


def test_a_refused_driver_leaves_no_folder_behind(tmp_path):
    run_dir = RunDir.of(str(tmp_path / "runs"), "fresh")
    with RunLock(run_dir):
        assert run_dir.root.is_dir()
    assert not run_dir.root.exists()  # nothing else was written: the folder goes with the lock
