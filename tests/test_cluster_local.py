"""A real two-node Ray cluster on this machine (cluster/local_cluster.sh), driven only through its
scripts, the job server and the `srgan-dist` CLI: no in-process ray.init (other tests may hold an
embedded Ray in this process). Ports differ from the defaults so a developer's cluster is safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cluster" / "local_cluster.sh"
RAY_BIN = Path(sys.executable).parent / "ray"


class LocalCluster:
    """cluster/local_cluster.sh on its own ports and temp dir."""

    def __init__(
        self,
        gcs_port: int,
        dashboard_port: int,
        auth: str = "token",
        extra_env: dict[str, str] | None = None,
    ):
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
        }
        if auth == "token":
            self.env["RAY_AUTH_TOKEN_PATH"] = f"{self.tmp}/auth_token"
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

    def wait_for_log(self, job_id: str, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.logs(job_id))
            if match:
                return match
            time.sleep(3)
        raise AssertionError(
            f"{pattern!r} not in the logs of {job_id} after {timeout}s:\n{self.logs(job_id)[-3000:]}"
        )

    def actor_nodes(self, class_name: str) -> set[str]:
        """Nodes that hosted actors of ``class_name`` (alive or dead) on this cluster."""
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
        return {actor["node_id"] for actor in json.loads(result.stdout)}


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


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with local_cluster(gcs_port=6590, dashboard_port=8565) as running:
        yield running


def test_up_is_idempotent_and_status_shows_two_nodes(cluster):
    again = cluster.script("up")
    assert again.returncode == 0 and "already running" in again.stderr
    status = cluster.script("status")
    assert status.returncode == 0, status.stderr
    assert "alive nodes: 2" in status.stdout


def test_submitted_job_runs_tasks_on_both_nodes_with_the_project_python(cluster):
    result = cluster.cli(
        "submit", "--entrypoint", "python cluster/check_cluster.py --nodes 2", "--name", "check", "--wait"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ended: SUCCEEDED" in result.stdout
    assert re.search(r"srgan-dist logs check-\d{8}-\d{6} --follow", result.stdout)
    assert "ray job logs check-" in result.stdout
    report = json.loads(re.search(r"CHECK_CLUSTER (\{.*\})", result.stdout).group(1))
    assert len(report["alive_nodes"]) == 2
    assert sorted(report["task_nodes"]) == report["alive_nodes"]  # one task on each node
    venv_bin = str(Path(sys.executable).parent)
    assert report["driver_python"].startswith(venv_bin)
    assert all(python.startswith(venv_bin) for python in report["task_pythons"])


def test_failed_job_makes_submit_wait_exit_nonzero(cluster):
    result = cluster.cli(
        "submit", "--entrypoint", "python -c 'raise SystemExit(3)'", "--name", "fails", "--wait"
    )
    assert result.returncode == 1
    assert "ended: FAILED" in result.stdout


def test_status_logs_and_stop_of_a_running_job(cluster):
    sleeper = "python -c 'import time; print(\"sleeping\", flush=True); time.sleep(900)'"
    submitted = cluster.cli("submit", "--entrypoint", sleeper, "--name", "sleeper")
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"Submitted job (\S+)", submitted.stdout).group(1)
    cluster.wait_for_log(job_id, "sleeping", timeout=120)
    status = cluster.cli("status", job_id)
    assert status.returncode == 0 and re.search(r"status:\s+RUNNING", status.stdout)
    stopped = cluster.cli("stop", job_id, timeout=180)
    assert stopped.returncode == 0 and f"Job {job_id}: STOPPED" in stopped.stdout
    assert re.search(r"status:\s+STOPPED", cluster.cli("status", job_id).stdout)


def test_token_auth_cluster_refuses_clients_without_the_token():
    with local_cluster(gcs_port=6790, dashboard_port=8765, auth="token") as secured:
        env = secured.script("env").stdout
        assert "export RAY_AUTH_MODE=token" in env and "RAY_AUTH_TOKEN_PATH=" in env
        with_token = secured.cli(
            "submit", "--entrypoint", "python -c 'print(42)'", "--name", "auth", "--wait"
        )
        assert with_token.returncode == 0, with_token.stderr
        secured.env = {**secured.env, "RAY_AUTH_MODE": "disabled"}
        del secured.env["RAY_AUTH_TOKEN_PATH"]
        without = secured.cli("submit", "--entrypoint", "python -c 'print(42)'", "--name", "auth")
        assert without.returncode == 1
        assert "token" in without.stderr.lower()
