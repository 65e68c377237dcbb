"""``make gpu-check-cpu``: the GPU acceptance run's CPU mode passes, so GPU-only code paths
(bench/gpu_check.py, bench/gpu_train.py and what they import) cannot rot unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_passes_in_cpu_mode(tmp_path):
    numbers = tmp_path / "gpu_check.json"
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(dir="/tmp")}  # socket paths <= 107 bytes
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--cpu", "--json", str(numbers)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith(("PASS ", "FAIL "))]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    checks = json.loads(numbers.read_text())["checks"]
    assert [line.split(":")[0] for line in lines] == [f"PASS {name}" for name in checks]
    assert len(checks) == 10 and all(check["passed"] for check in checks.values())
    assert checks["mini-run"]["stages"]["srresnet"]["nonfinite_skips"] == 1
    assert checks["buffer-lifetime"]["differ"] == 0
