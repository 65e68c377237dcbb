"""The session's two-node local cluster (conftest ``two_node_cluster``: cluster/local_cluster.sh
with token authentication), driven only through its scripts, the job server and the `srgan-dist`
CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(two_node_cluster) -> LocalCluster:
    return two_node_cluster


def test_up_is_idempotent_and_status_shows_two_nodes(cluster):
    again = cluster.script("up")
    assert again.returncode == 0 and "already running" in again.stderr
    status = cluster.script("status")
    assert status.returncode == 0, status.stderr
    assert "alive nodes: 2" in status.stdout
    # Ray's session folders are 0777 and its logs 0644: only this user may enter their parent.
    assert Path(cluster.tmp).stat().st_mode & 0o777 == 0o700


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
    log = cluster.follow(job_id)
    try:
        log.wait_for("sleeping", timeout=120)
    finally:
        log.close()
    status = cluster.cli("status", job_id)
    assert status.returncode == 0 and re.search(r"status:\s+RUNNING", status.stdout)
    stopped = cluster.cli("stop", job_id, timeout=180)
    assert stopped.returncode == 0 and f"Job {job_id}: STOPPED" in stopped.stdout
    assert re.search(r"status:\s+STOPPED", cluster.cli("status", job_id).stdout)


def test_token_auth_cluster_refuses_clients_without_the_token(cluster):
    env = cluster.script("env").stdout
    assert "export RAY_AUTH_MODE=token" in env and "RAY_AUTH_TOKEN_PATH=" in env
    # Every submit of this session's cluster tests carries the token; one without it is refused.
    without_token = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    without = subprocess.run(
        [
            sys.executable,
            "-m",
            "srgan_dist.cli",
            "submit",
            "--entrypoint",
            "python -c 'print(42)'",
            "--name",
            "auth",
        ],
        env={**without_token, "RAY_AUTH_MODE": "disabled"},
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert without.returncode == 1
    assert "token" in without.stderr.lower()
