"""``scaling.accelerator: gpu`` on a cluster without GPUs yet: the driver asks Ray for them and
waits, and gives up with a clear error after ``scaling.resource_timeout_s``.

Uses real Ray clusters from ``ray.cluster_utils`` on this machine; a node with a *logical* GPU
(``num_gpus=1``) joining later stands in for the node an autoscaler adds.
"""

from __future__ import annotations

import threading
import time

import pytest
from conftest import start_embedded_ray

from srgan_dist.config import load_config
from srgan_dist.ray_session import ClusterError, decide_gpu

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    # One Ray per process: the session's embedded Ray (conftest.ray_local), if this test worker
    # started it, gives way to the fake cluster and comes back after this module.
    embedded = ray.is_initialized()
    if embedded:
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    if embedded:
        start_embedded_ray()


def gpu_config(*overrides: str):
    return load_config(None, ["scaling.accelerator=gpu", "scaling.num_workers=1", *overrides])


def test_gpu_run_without_gpus_gives_up_after_the_timeout(cluster, capsys):
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"waiting for 1 GPU worker\(s\): the cluster has 0 GPU") as error:
        decide_gpu(gpu_config("scaling.resource_timeout_s=1").scaling)
    assert "Nothing was started" in str(error.value)
    assert time.monotonic() - started < 60
    out = capsys.readouterr().out
    assert "Training on GPUs: 1 worker(s), 1 GPU each (NCCL) - scaling.accelerator=gpu" in out
    assert "waiting for 1 GPU worker(s) (cluster has 0 GPU(s); the autoscaler may be adding nodes)" in out


def test_gpu_run_waits_for_a_gpu_node_that_joins_later(cluster, capsys):
    import ray

    outcome: dict = {}
    waiter = threading.Thread(
        target=lambda: outcome.update(
            use_gpu=decide_gpu(gpu_config("scaling.resource_timeout_s=120").scaling)
        )
    )
    waiter.start()
    out, deadline = "", time.monotonic() + 60
    while "waiting for 1 GPU worker(s) (cluster has 0 GPU(s)" not in out and time.monotonic() < deadline:
        out += capsys.readouterr().out
        time.sleep(0.1)
    assert "waiting for 1 GPU worker(s) (cluster has 0 GPU(s)" in out
    waiter.join(timeout=2.5)  # longer than one of wait_for_workers's 2 s polls
    assert waiter.is_alive()  # still waiting: no GPU yet
    cluster.add_node(num_cpus=1, num_gpus=1)  # Ray starts nodes from the main thread only
    waiter.join(timeout=100)
    assert outcome == {"use_gpu": True}
    assert ray.cluster_resources().get("GPU") == 1
    assert "1 GPU(s) available after" in out + capsys.readouterr().out


def test_auto_says_why_it_picked(cluster, capsys):
    # The GPU node of the previous test is there now: auto takes it, and says so.
    assert decide_gpu(load_config(None, ["scaling.accelerator=auto"]).scaling) is True
    assert "auto: the cluster has 1 GPU(s)" in capsys.readouterr().out
    assert decide_gpu(load_config(None, ["scaling.accelerator=cpu"]).scaling) is False
    assert "scaling.accelerator=cpu" in capsys.readouterr().out


def test_cpu_workers_beyond_the_cluster_wait_and_give_up_with_the_count(cluster, capsys):
    import ray

    have = ray.cluster_resources()["CPU"]
    overrides = ["scaling.accelerator=cpu", "scaling.num_workers=50", "scaling.resource_timeout_s=1"]
    with pytest.raises(
        ClusterError, match=rf"50 CPU worker\(s\): the cluster has {have:g} CPU\(s\), they need 50"
    ):
        decide_gpu(load_config(None, overrides).scaling)
    assert "waiting for 50 CPU worker(s)" in capsys.readouterr().out


def test_a_worker_group_whose_resources_stay_taken_stops_after_the_timeout(cluster, tmp_path):
    """The cluster has the CPU a worker needs (the pre-flight wait passes at once) but an actor
    holds it: Ray Train's start waits ``scaling.resource_timeout_s`` and the run stops with one
    line. (Ray Train alone would retry the start every 60 s, forever.)"""
    import ray

    from srgan_dist.driver import RunError, fit_stages
    from srgan_dist.rundir import RunDir

    @ray.remote(num_cpus=1)
    class Holder:
        def ready(self) -> bool:
            return True

    # Every CPU of the cluster held (the earlier tests of this module added a node).
    holders = [Holder.remote() for _ in range(int(ray.cluster_resources()["CPU"]))]
    ray.get([holder.ready.remote() for holder in holders])
    cfg = load_config(
        None,
        [
            f"run.storage={tmp_path}",
            "scaling.accelerator=cpu",
            "scaling.num_workers=1",
            "scaling.resource_timeout_s=2",
        ],
    )
    outcome: dict = {}

    def fit() -> None:
        try:
            fit_stages(cfg, RunDir.of(cfg.run.storage, cfg.run.name), ["unused.png"], [], use_gpu=False)
        except RunError as error:
            outcome["error"] = str(error)

    started = time.monotonic()
    runner = threading.Thread(target=fit, daemon=True)
    runner.start()
    runner.join(timeout=60)
    for holder in holders:
        ray.kill(holder)
    assert not runner.is_alive(), "Ray Train still retries the worker group's start after 60 s"
    assert time.monotonic() - started < 60
    message = outcome["error"]
    assert message.startswith(
        "gave up after scaling.resource_timeout_s=2 s: Ray Train could not place 1 worker(s) of 1 CPU "
        "for stage srresnet"
    )
    assert "\n" not in message and "--resume" in message
