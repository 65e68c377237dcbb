"""Training through the Jobs API on the two-node local cluster: an elastic run that loses a node,
and stop → resubmit (same name, other worker count) → resume. (A two-stage job with SPREAD workers
on both nodes is in test_storage.py: it trains into a bucket.)

Both nodes run on this machine, so a /tmp folder is "shared storage" for data and runs.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml
from test_training import RAY_NOISE, photos, steps_per_event_file, tiny_config  # noqa: F401

from srgan_dist.config import to_dict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(two_node_cluster):
    return two_node_cluster


def write_config(photos, storage: Path, name: str, path: Path, *overrides: str) -> Path:  # noqa: F811
    """The training tests' tiny config as a YAML file the job reads (absolute /tmp path)."""
    cfg = tiny_config(photos, storage, name, "scaling.placement_strategy=SPREAD", *overrides)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def test_elastic_training_continues_on_one_worker_when_a_node_goes_away(cluster, photos, tmp_path):  # noqa: F811
    """`--workers 1-2`: Ray Train starts 2 workers; losing the second node resumes on 1 from a checkpoint.

    Runs before the stop test below: a stopped job's controller never withdraws its resource
    request from Ray's AutoscalingCoordinator, which an elastic run counts as taken until it
    expires (180 s); an elastic job started in that time waits."""
    storage = tmp_path / "runs"
    config = write_config(
        photos,
        storage,
        "elastic",
        tmp_path / "elastic.yaml",
        "train.stages=[srresnet]",
        "train.max_failures=-1",  # failed starts while Ray notices the lost node count as failures
        "srresnet.iterations=100000",
        "srresnet.checkpoint_interval=10",
        "srresnet.log_interval=10",
        "srresnet.val_interval=100000",
    )
    submitted = cluster.cli(
        "submit", "--config", str(config), "--name", "elastic", "--storage", str(storage), "--workers", "1-2"
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = re.search(r"Submitted job (\S+)", submitted.stdout).group(1)
    log = cluster.follow(job_id)  # `srgan-dist logs --follow`
    try:
        log.wait_for(r"\[srresnet\] starting on 2 worker\(s\)", timeout=300)
        log.wait_for(r"\[srresnet\] step 20/", timeout=300)
        lost = cluster.script("down-worker")
        assert lost.returncode == 0, lost.stderr
        resumed = log.wait_for(
            r"\[srresnet\] resumed from checkpoint at step (\d+)/\d+ on 1 worker\(s\)", timeout=600
        )
        step = int(resumed.group(1))
        assert step >= 10  # from a checkpoint, not from scratch
        log.wait_for(rf"\[srresnet\] step {step + 10}/", timeout=300)  # and it trains on
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
