"""A running driver, as users meet it: a second driver on the same run (new or ``--resume``) is
refused naming the first; SIGTERM and Ctrl-C stop it within seconds with one line saying where
``--resume`` continues; ``--resume`` then continues from that checkpoint. Each driver is a
``launch.py`` process with its own embedded Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import training_photos
from test_training import ROOT, tiny_overrides

from srgan_dist.cli import main
from srgan_dist.run_lock import LOCK_FILE

pytestmark = pytest.mark.slow


def launch(overrides: list[str], *flags: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # A short path of its own: Ray's socket paths under it must stay within 107 bytes.
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="srgan-ray-", dir="/tmp")
    command = [sys.executable, "launch.py", "--config", "configs/demo.yaml", *flags, *overrides]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def newest_checkpoint(stage_dir: Path) -> int:
    done = [int(p.parent.name.removeprefix("step-")) for p in stage_dir.glob("step-*/manifest.json")]
    return max(done, default=0)


def test_a_running_run_is_refused_to_a_second_driver_and_stops_on_sigterm_with_one_line(
    tmp_path_factory, tmp_path, capsys
):
    photos = training_photos(tmp_path_factory)
    storage = tmp_path / "runs"
    overrides = tiny_overrides(
        photos, storage, "busy", "srresnet.iterations=100000", "train.stages=[srresnet]"
    )
    first = launch(overrides)
    stage_dir = storage / "busy" / "busy-srresnet"
    deadline = time.monotonic() + 240
    while newest_checkpoint(stage_dir) < 4 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert first.poll() is None, first.communicate()[1][-3000:]
    assert newest_checkpoint(stage_dir) >= 4
    try:
        # A second driver on the same run, new or resumed: one line naming the first, exit 2,
        # nothing of the run touched.
        for flags in ([], ["--resume"]):
            argv = ["train", "--config", str(ROOT / "configs/demo.yaml"), *flags, *overrides]
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert f"in use by another driver (pid {first.pid} on " in err
            assert "Traceback" not in err
        assert first.poll() is None  # still training

        first.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        _, err = first.communicate(timeout=60)
        assert time.monotonic() - stopped_at < 30
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 128 + signal.SIGTERM
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith("stopped during stage srresnet; its newest checkpoint is step ")
        and "--resume" in last
    )
    assert "Traceback" not in err
    step = int(last.split("checkpoint is step ")[1].split(";")[0])
    assert step >= 4 and (stage_dir / f"step-{step:08d}" / "manifest.json").is_file()
    assert not (storage / "busy" / LOCK_FILE).exists()  # released

    # The same command with --resume continues from that checkpoint (a shorter stage, to end soon:
    # the schedule is frozen on resume, so the run is resumed with its own iteration count and
    # stopped by Ctrl-C once it has gone past the checkpoint).
    again = launch(overrides, "--resume")
    lines = []
    try:
        for line in again.stdout:
            lines.append(line)
            if "resumed from checkpoint" in line:
                break
        again.send_signal(signal.SIGINT)
        _, err = again.communicate(timeout=60)
    finally:
        if again.poll() is None:
            again.kill()
    assert f"[srresnet] resumed from checkpoint at step {step}/100000" in "".join(lines)
    assert again.returncode == 128 + signal.SIGINT
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("stopped during stage srresnet; its newest checkpoint is step ")
    )
