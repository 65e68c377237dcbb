"""`srgan-dist tensorboard RUN_DIR` serves the run's event files on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_tensorboard_serves_a_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    writer = SummaryWriter(str(run_dir / "tensorboard" / "srresnet"))
    writer.add_scalar("loss/content", 0.5, 1)
    writer.close()
    assert runs_served(run_dir) == ["srresnet"]  # one TensorBoard run per stage folder


def runs_served(run_dir: Path) -> list[str]:
    """The runs ``srgan-dist tensorboard run_dir`` serves on a free port. The port is free when
    chosen and may be taken before TensorBoard binds it (other tests start servers too): then
    TensorBoard says so and exits, and another port is tried."""
    for _ in range(3):
        port = _free_port()
        command = [sys.executable, "-m", "srgan_dist.cli", "tensorboard", str(run_dir), "--port", str(port)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2) as response:
                        return json.loads(response.read())
                except OSError:
                    time.sleep(0.25)
            output = process.stdout.read() if process.poll() is not None else "still not serving after 90 s"
            assert "could not bind to port" in output, output
        finally:
            process.terminate()
            process.wait(timeout=30)
    raise AssertionError("three free ports were taken before TensorBoard bound them")


def test_tensorboard_refuses_a_missing_directory(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "srgan_dist.cli", "tensorboard", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "nope" in result.stderr
