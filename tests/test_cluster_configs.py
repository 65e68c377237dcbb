"""Every file in cluster/ is well formed and tells the same story (entrypoint, pins, security)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER_YAMLS = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
KUBERAY_YAMLS = sorted((CLUSTER / "kuberay").glob("*.yaml"))
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")


def load_all(path: Path) -> list[dict]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs and all(isinstance(doc, dict) for doc in docs), path
    return docs


def test_every_yaml_in_cluster_parses():
    paths = sorted(CLUSTER.rglob("*.yaml"))
    assert {p.name for p in paths} >= {
        "aws.yaml",
        "gcp.yaml",
        "raycluster.yaml",
        "rayjob.yaml",
        "runtime_env.yaml",
    }
    for path in paths:
        load_all(path)


def test_makefile_pins_the_same_torch_pair():
    makefile = (ROOT / "Makefile").read_text()
    assert all(pin in makefile for pin in TORCH_PINS)


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_has_a_cpu_head_and_gpu_workers(path):
    (config,) = load_all(path)
    for key in (
        "cluster_name",
        "provider",
        "available_node_types",
        "head_node_type",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        "max_workers",
    ):
        assert key in config, f"{path.name}: missing {key}"
    assert config["provider"]["type"] in ("aws", "gcp")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_types = [
        t
        for name, t in types.items()
        if name != config["head_node_type"] and t["resources"].get("GPU", 0) >= 1
    ]
    assert gpu_types, f"{path.name}: no GPU worker node type"
    for node_type in types.values():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"]
        assert "node_config" in node_type
    setup = "\n".join(config["setup_commands"])
    assert all(pin in setup for pin in TORCH_PINS) and "pip install --quiet -e ." in setup
    head_start = "\n".join(config["head_start_ray_commands"])
    assert "--head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token" in head_start
    assert "RAY_AUTH_MODE=token" in "\n".join(config["worker_start_ray_commands"])


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_has_a_spot_gpu_worker_type_that_says_what_a_reclaim_does(path):
    (config,) = load_all(path)
    spot = config["available_node_types"]["gpu_worker_spot"]
    assert spot["resources"]["GPU"] >= 1 and spot["min_workers"] == 0
    node = spot["node_config"]
    if config["provider"]["type"] == "aws":
        assert node["InstanceMarketOptions"]["MarketType"] == "spot"
    else:
        assert {"provisioningModel": "SPOT"} in node["scheduling"]
    text = path.read_text()
    comment = text[text.index("  gpu_worker_spot:") : text.index("head_node_type:")]
    for words in (
        "DRAIN_NODE_REASON_PREEMPTION",
        "train.preemption_check_interval",
        "train.max_preemption_failures",
    ):
        assert words in comment, words


def test_kuberay_cluster_has_a_spot_worker_group_that_drains_within_its_grace_period():
    (manifest,) = load_all(ROOT / "cluster" / "kuberay" / "raycluster.yaml")
    (group,) = [g for g in manifest["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu-workers-spot"]
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}
    (container,) = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    # SIGTERM makes `ray start --block` drain its node as a preemption for this long; the pod
    # must outlive the drain.
    assert 0 < float(env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"]) < pod["terminationGracePeriodSeconds"]


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


@pytest.mark.parametrize("path", KUBERAY_YAMLS, ids=lambda p: p.name)
def test_kuberay_manifest_has_gpu_worker_groups(path):
    (manifest,) = load_all(path)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] in ("RayCluster", "RayJob")
    spec = manifest["spec"] if manifest["kind"] == "RayCluster" else manifest["spec"]["rayClusterSpec"]
    assert spec["rayVersion"].startswith("2.60")
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head and containers(head["template"])
    assert all("nvidia.com/gpu" not in str(c.get("resources")) for c in containers(head["template"]))
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for container in containers(group["template"]):
            assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    if manifest["kind"] == "RayJob":
        assert ENTRYPOINT.search(manifest["spec"]["entrypoint"])


ENTRYPOINT = re.compile(r"python \S*launch\.py --address auto --config \S+")


def test_every_documented_job_command_runs_launch_py_with_address_auto():
    texts = [
        p.read_text()
        for p in [*LAUNCHER_YAMLS, *KUBERAY_YAMLS, CLUSTER / "runtime_env.yaml", CLUSTER / "README.md"]
    ]
    launches = [line for text in texts for line in re.findall(r"python \S*launch\.py[^\n]*", text)]
    assert launches
    for line in launches:
        assert ENTRYPOINT.search(line), f"inconsistent entrypoint: {line}"


def test_dockerfile_installs_the_pinned_torch_then_the_project_on_cuda_13():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"nvidia/cuda:13\.", text)
    torch_at = text.index("pip install torch==2.14.1 torchvision==0.29.1")
    assert torch_at < text.index("pip install -e .")


def test_local_cluster_script_binds_the_job_server_to_loopback_and_never_runs_ray_stop():
    script = (CLUSTER / "local_cluster.sh").read_text()
    assert "--dashboard-host 127.0.0.1" in script
    assert "ray stop" not in script.replace("(unlike `ray stop`", "")
