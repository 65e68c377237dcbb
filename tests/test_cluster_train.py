"""Training through the Jobs API on the two-node local cluster: an elastic run whose spot node is reclaimed,
and stop → resubmit (same name, other worker count) → resume. (A two-stage job with SPREAD workers
on both nodes is in test_storage.py: it trains into a bucket.)

Both nodes run on this machine, so a /tmp folder is "shared storage" for data and runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import RAY_BIN, ROOT
from test_training import RAY_NOISE, photos, steps_per_event_file, tiny_config  # noqa: F401

from srgan_dist.config import to_dict
from srgan_dist.train import checkpoint as ckpt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(two_node_cluster):
    return two_node_cluster


def write_config(photos, storage: Path, name: str, path: Path, *overrides: str) -> Path:  # noqa: F811
    """The training tests' tiny config as a YAML file the job reads (absolute /tmp path)."""
    cfg = tiny_config(photos, storage, name, "scaling.placement_strategy=SPREAD", *overrides)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def second_node_id(cluster) -> str:
    """The Ray node id of the cluster's second (non-head) node."""
    listed = subprocess.run(
        [
            str(RAY_BIN),
            "list",
            "nodes",
            "--address",
            cluster.address,
            "--filter",
            "state=ALIVE",
            "--format",
            "json",
        ],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (node,) = [node for node in json.loads(listed.stdout) if not node["is_head_node"]]
    return node["node_id"]


def test_a_reclaimed_spot_node_checkpoints_on_notice_and_the_run_resumes_from_it(cluster, photos, tmp_path):  # noqa: F811
    """A spot reclaim of one node of an elastic 2-worker SPREAD run (`--workers 1-2`): Ray Core
    drains the node (`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION`, what the autoscaler
    does on a reclaim notice), the run checkpoints at its next preemption check and at each one
    after, the node dies, and Ray Train restarts the run on the one node left from the newest of
    those checkpoints (there are no others: checkpoint_interval is beyond the run's end), losing
    at most one check interval of steps, and it finishes.

    Runs before the stop test below: a stopped job's controller never withdraws its resource
    request from Ray's AutoscalingCoordinator, which an elastic run counts as taken until it
    expires (180 s); an elastic job started in that time waits."""
    storage = tmp_path / "runs"
    check = 5
    config = write_config(
        photos,
        storage,
        "spot",
        tmp_path / "spot.yaml",
        "train.stages=[srresnet]",
        "train.max_failures=-1",  # failed starts while Ray notices the lost node count as failures
        f"train.preemption_check_interval={check}",
        "srresnet.iterations=600",  # not over before the notice (at steps 265-340 here)
        "srresnet.checkpoint_interval=100000",
        "srresnet.log_interval=1",
        "srresnet.val_interval=100000",
    )
    submitted = cluster.cli(
        "submit", "--config", str(config), "--name", "spot", "--storage", str(storage), "--workers", "1-2",
        "--env", "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S=0.5",  # Ray Train's watcher: 5 s by default
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = re.search(r"Submitted job (\S+)", submitted.stdout).group(1)
    log = cluster.follow(job_id)  # `srgan-dist logs --follow`
    stage_dir = storage / "spot" / "spot-srresnet"
    try:
        log.wait_for(r"\[srresnet\] starting on 2 worker\(s\)", timeout=300)  # one per node
        drain = subprocess.run(
            [
                sys.executable, str(ROOT / "cluster" / "ray_loopback.py"), "drain-node",
                "--address", cluster.gcs_address, "--node-id", second_node_id(cluster),
                "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot",
                "--deadline-remaining-seconds", "10",
            ],
            env=cluster.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert drain.returncode == 0, drain.stdout + drain.stderr
        notice = log.wait_for(
            r"\[srresnet\] preemption notice at step (\d+): node\(s\) \w+ \(rank", timeout=120
        )
        noticed_at = int(notice.group(1))
        deadline = time.monotonic() + 120
        while not any((folder / ckpt.MANIFEST_FILE).is_file() for folder in stage_dir.glob("step-*")):
            assert time.monotonic() < deadline, log.text[-3000:]
            time.sleep(0.1)
        lost = cluster.script("down-worker")  # the reclaim
        assert lost.returncode == 0, lost.stderr
        resumed = log.wait_for(
            r"\[srresnet\] resumed from checkpoint at step (\d+)/\d+ on 1 worker\(s\)", timeout=600
        )
        resumed_at = int(resumed.group(1))
        before = log.text[: resumed.start()]
        reached = max(int(step) for step in re.findall(r"\[srresnet\] step (\d+)/", before))
        print(
            f"spot reclaim: notice at step {noticed_at}, node lost after step {reached}, resumed at {resumed_at}"
        )
        assert noticed_at <= resumed_at and resumed_at % check == 0  # a checkpoint of a check
        assert reached - resumed_at <= check, (noticed_at, resumed_at, reached)  # steps redone
        log.wait_for(r"Stage srresnet: done", timeout=600)
        assert not [noise for noise in RAY_NOISE if noise in log.text]
    finally:
        log.close()
        cluster.cli("stop", job_id, "--no-wait")
        cluster.script("up-worker")


def test_stopped_job_resumes_from_its_checkpoint_with_another_worker_count(cluster, photos, tmp_path):  # noqa: F811
    storage = tmp_path / "runs"
    settings = ("srresnet.iterations=100", "srresnet.val_interval=1000")
    config = write_config(
        photos, storage, "resume", tmp_path / "resume.yaml", *settings, "srresnet.checkpoint_interval=2"
    )
    first = cluster.cli(
        "submit", "--config", str(config), "--name", "resume", "--storage", str(storage), "--workers", "2"
    )
    assert first.returncode == 0, first.stderr
    job_id = re.search(r"Submitted job (\S+)", first.stdout).group(1)
    deadline = time.monotonic() + 600
    registered = storage / "resume" / "checkpoint_manager_snapshot.json"  # once Ray registers one
    while not registered.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert registered.is_file(), cluster.logs(job_id)[-4000:]
    stopped = cluster.cli("stop", job_id, timeout=180)
    assert f"Job {job_id}: STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr

    # Same name and training settings, 1 worker instead of 2. (Checkpointing every 2 steps kept
    # the first job running until the stop; the rest of the run need not wait on Ray's polls.)
    config = write_config(
        photos, storage, "resume", tmp_path / "resume-rest.yaml", *settings, "srresnet.checkpoint_interval=50"
    )
    second = cluster.cli(
        "submit",
        "--config",
        str(config),
        "--name",
        "resume",
        "--storage",
        str(storage),
        "--workers",
        "1",
        "--resume",
        "--wait",
        timeout=900,
    )
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert re.search(r"Submitted job resume-\d{8}-\d{6}", second.stdout).group(0) != f"Submitted job {job_id}"
    attempts = steps_per_event_file(storage / "resume" / "tensorboard" / "srresnet", "loss/content")
    assert len(attempts) >= 2
    assert attempts[-1][0] > 1  # the resubmitted job started after the checkpointed step
    assert (storage / "resume" / "generator_srgan.safetensors").is_file()
