"""``srgan-dist doctor``: its node-side checks in this process, and the whole command against real
two-node clusters (cluster/local_cluster.sh with token auth): the session's ``two_node_cluster``,
where the storage is shared, and one of its own whose second node sees its own private storage (a
tmpfs in its own mount namespace)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RAY_BIN, LocalCluster, local_cluster, write_photos
from PIL import Image

from srgan_dist.doctor import CheckLine, NodeProbe

LINE = re.compile(r"^(PASS|WARN|FAIL) (\S+) (\S+) (.*)$", re.MULTILINE)


def lines_of(output: str) -> list[tuple[str, str, str, str]]:
    """``(status, check, node, rest)`` of every doctor line in ``output``."""
    return LINE.findall(output)


def statuses(output: str, check: str) -> list[str]:
    return [status for status, name, _, _ in lines_of(output) if name == check]


# ---------------------------------------------------------------------------------------------
# Node-side checks, in this process.


def test_check_line_format():
    line = CheckLine("FAIL", "vgg", "10.0.0.2/ab12cd34", "missing", "copy it")
    assert str(line) == "FAIL vgg 10.0.0.2/ab12cd34 missing fix: copy it"
    assert str(CheckLine("PASS", "nodes", "n", "ok")) == "PASS nodes n ok"


def test_storage_probe_writes_reads_and_cleans_up(tmp_path):
    probe, directory = NodeProbe(), tmp_path / ".doctor" / "abc"
    status, reason, _ = probe.write_probe(str(directory / "node.probe"), "token-1")
    assert status == "PASS" and "node.probe" in reason
    assert probe.read_probe(str(directory / "node.probe")) == "token-1"
    assert probe.read_probe(str(directory / "other.probe")) is None
    probe.remove_tree(str(directory))
    assert not (tmp_path / ".doctor").exists()


def test_vgg_check_names_a_missing_or_wrong_file(tmp_path):
    status, reason, fix = NodeProbe().load_vgg("/nonexistent/vgg19.pth", random_fallback=False)
    assert status == "FAIL" and "/nonexistent/vgg19.pth" in reason and "every node" in fix
    wrong = tmp_path / "not_vgg.pth"
    torch.save({"weight": torch.zeros(2)}, wrong)
    status, reason, _ = NodeProbe().load_vgg(str(wrong), random_fallback=False)
    assert status == "FAIL" and "not a torchvision vgg19 state dict" in reason


def test_vgg_check_offline_imagenet_fails_with_the_cache_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens: offline for sure
    status, _, fix = NodeProbe().load_vgg("imagenet", random_fallback=False)
    assert status == "FAIL"
    assert f"{tmp_path}/hub/checkpoints/vgg19-dcbb9e9d.pth" in fix and "loss.vgg_weights=PATH" in fix
    status, reason, _ = NodeProbe().load_vgg("imagenet", random_fallback=True)
    assert status == "WARN" and "RANDOM" in reason


def test_the_all_reduce_check_moves_ds_gradient_size_and_says_its_bandwidth():
    """The buffer is D's parameter count (the paper's D: ~94 MB of fp32 gradients per step), from
    the model; the timing sums right in a 1-rank gloo group (bus bandwidth 0: nothing moves)."""
    import torch.distributed as dist

    from srgan_dist.config import load_config
    from srgan_dist.doctor import discriminator_gradient_numel, timed_all_reduce
    from srgan_dist.models import Discriminator

    paper = discriminator_gradient_numel(load_config(None, []))
    assert 90e6 < paper * 4 < 100e6
    small = load_config(None, ["model.disc_channels=8", "model.disc_norm=none"])
    assert discriminator_gradient_numel(small) == sum(
        p.numel() for p in Discriminator(channels=8, norm="none").parameters()
    )
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        timing = timed_all_reduce(1000, torch.device("cpu"), rank=0)
    finally:
        dist.destroy_process_group()
    assert timing["sum"] == 1.0 and timing["bytes"] == 4000 and timing["seconds"] > 0
    assert timing["algbw_gb_s"] > 0 and timing["busbw_gb_s"] == 0


def test_dali_decode_and_resize_on_cpu():
    """The helper the GPU check runs with ``mixed``; here with ``cpu`` (no GPU needed)."""
    from srgan_dist.data.dali_pipeline import decode_and_resize

    photo = np.full((48, 64, 3), (200, 40, 90), dtype=np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(photo).save(encoded, format="JPEG", quality=95)
    out = decode_and_resize(encoded.getvalue(), decode_device="cpu", size=16, device_id=None)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - photo[0, 0]).max() <= 4  # a flat colour stays that colour


# ---------------------------------------------------------------------------------------------
# The command against real clusters.


@pytest.fixture(scope="module")
def cluster(two_node_cluster) -> LocalCluster:
    """A healthy cluster is all these tests need: the session's (starting one costs tens of
    seconds); only the private-storage test below needs a cluster of its own."""
    return two_node_cluster


@pytest.mark.slow
def test_doctor_passes_on_a_healthy_cluster_through_the_job_server(cluster, tmp_path):
    storage = tmp_path / "runs"
    storage.mkdir()
    write_photos(tmp_path / "train", 2, (64, 64))
    # cluster.env has RAY_ADDRESS=http://...: doctor submits itself as a job.
    result = cluster.cli(
        "doctor", "--config", "configs/demo.yaml", "--storage", str(storage), "train.stages=[srresnet]",
        f"data.train={tmp_path / 'train'}", "data.val=",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "doctor runs as job doctor-" in output and "ended: SUCCEEDED" in output
    for check in ("nodes", "versions", "storage-write", "storage-shared"):
        assert statuses(output, check) == ["PASS", "PASS"], (check, output[-4000:])
    assert len({node for _, check, node, _ in lines_of(output) if check == "versions"}) == 2
    assert statuses(output, "gpu") == ["PASS", "PASS"] and "CPU-only node" in output
    assert re.search(r"^PASS workers cluster scaling.num_workers=2 ", output, re.MULTILINE)
    assert re.search(r"^PASS all-reduce cluster 2 workers \(gloo, nodes \w+,\w+\): all-reduce", output, re.M)
    assert re.search(r"^PASS vgg cluster not needed", output, re.MULTILINE)
    assert statuses(output, "data") == ["PASS", "PASS"]  # each node lists and reads data.train
    assert f"data.train: listed 2 file(s) in {tmp_path / 'train'}" in output
    assert not (storage / ".doctor").exists()  # cleaned up


@pytest.mark.slow
def test_doctor_without_the_token_says_how_to_connect(cluster):
    env = {key: value for key, value in cluster.env.items() if not key.startswith("RAY_AUTH")}
    result = subprocess.run(
        [str(RAY_BIN.parent / "python"), "-m", "srgan_dist.cli", "doctor", "--address", cluster.gcs_address],
        env={**env, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    line = r"^FAIL connect cluster .* refused this process's authentication \(InvalidAuthToken: .*\) fix: .*RAY_AUTH_TOKEN_PATH"
    assert re.search(line, result.stdout, re.MULTILINE), result.stdout
    # The job server's URL without the token, and a closed port: one line each, no traceback.
    for address in (cluster.address, "http://127.0.0.1:1"):
        result = subprocess.run(
            [str(RAY_BIN.parent / "python"), "-m", "srgan_dist.cli", "doctor", "--address", address],
            env={**env, "RAY_AUTH_MODE": "disabled"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        expected = "RAY_AUTH_TOKEN_PATH" if address == cluster.address else address
        assert expected in result.stderr, result.stderr


def private_storage_python(folder: Path, storage: Path) -> Path:
    """An interpreter wrapper for local_cluster.sh (``SRGAN_CLUSTER_PYTHON``) that starts the
    joining node (``ray_loopback.py start --address ...``) in its own mount namespace with a tmpfs
    over ``storage``: that node and the head each see their own."""
    python = RAY_BIN.parent / "python"
    wrapper = folder / "python"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" start "*" --address "*)\n'
        f'  exec unshare -m --propagation private sh -c \'mount -t tmpfs doctor-test {storage} && exec "$0" "$@"\' '
        f'{python} "$@" ;;\n'
        "esac\n"
        f'exec {python} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.slow
# On the shared cluster's test worker: two local clusters starting at once on 2 busy cores made this
# one's second node time out at start-up (fresh-clone make test, 2026-11-27).
@pytest.mark.xdist_group("two_node_cluster")
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_doctor_fails_when_only_one_node_sees_the_storage_and_the_vgg_file_is_missing(tmp_path):
    """Two problems at once, each named on its own lines with its fix: the second node has its own
    private storage folder, and loss.vgg_weights names a file no node has."""
    storage = tmp_path / "storage"
    storage.mkdir()
    (tmp_path / "bin").mkdir()
    python = private_storage_python(tmp_path / "bin", storage)
    with local_cluster(
        gcs_port=7090, dashboard_port=9065, auth="token", extra_env={"SRGAN_CLUSTER_PYTHON": str(python)}
    ) as split:
        result = split.cli(
            "doctor", "--address", split.gcs_address, "--storage", str(storage), "--workers", "1",
            "loss.vgg_weights=/nonexistent/vgg19.pth",
        )  # fmt: skip
    output = result.stdout + result.stderr
    print(output)  # shown with pytest -rP (the README quotes it)
    assert result.returncode == 1, output[-4000:]
    assert statuses(output, "storage-write") == ["PASS", "PASS"]  # each node can write its own copy
    shared = [rest for status, check, _, rest in lines_of(output) if check == "storage-shared"]
    assert statuses(output, "storage-shared") == ["FAIL", "FAIL"], output[-4000:]
    assert all(
        "is not shared between nodes" in rest and "fix: mount the same shared" in rest for rest in shared
    )
    assert not (storage / ".doctor").exists()  # the head's copy is cleaned up

    vgg = [(status, rest) for status, check, _, rest in lines_of(output) if check == "vgg"]
    assert len(vgg) == 2 and all(
        status == "FAIL" and "/nonexistent/vgg19.pth" in rest for status, rest in vgg
    )
    assert "fix: copy a torchvision vgg19 state dict" in output
    assert statuses(output, "versions") == ["PASS", "PASS"]  # the rest is checked all the same
    failures = sum(status == "FAIL" for status, *_ in lines_of(output))
    assert re.search(rf"^doctor: \d+ PASS, \d+ WARN, {failures} FAIL", output, re.MULTILINE)


def test_worker_fit_fails_on_cpus_and_only_warns_for_gpus_an_autoscaler_may_add():
    from srgan_dist.config import load_config
    from srgan_dist.doctor import Doctor, Node

    nodes = [Node(node_id=f"{i}" * 16, ip="10.0.0.1", cpus=1, gpus=0, is_head=i == 0) for i in range(2)]
    out = io.StringIO()
    cpu = Doctor(load_config(None, ["scaling.num_workers=3", "scaling.accelerator=cpu"]), "/tmp", out=out)
    assert cpu.check_workers(nodes) is False
    gpu = Doctor(load_config(None, ["scaling.num_workers=2", "scaling.accelerator=gpu"]), "/tmp", out=out)
    assert gpu.check_workers(nodes) is True  # the all-reduce's GPU request reaches the autoscaler
    assert [line.status for line in cpu.lines + gpu.lines] == ["FAIL", "WARN"]
    assert "room for 2" in cpu.lines[0].reason and "room for 0" in gpu.lines[0].reason


def test_an_elastic_worker_range_needs_room_for_its_minimum_and_is_checked_elastic(monkeypatch):
    """``--workers MIN-MAX``: the run starts once MIN fit, and the all-reduce runs elastic too."""
    import ray

    from srgan_dist.config import load_config
    from srgan_dist.doctor import Doctor, Node
    from srgan_dist.ray_session import scaling_config

    nodes = [Node(node_id=f"{i}" * 16, ip="10.0.0.1", cpus=1, gpus=0, is_head=i == 0) for i in range(2)]
    out = io.StringIO()
    cfg = load_config(None, ["scaling.num_workers=3", "scaling.min_workers=2", "scaling.accelerator=cpu"])
    doctor = Doctor(cfg, "/tmp", out=out)
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 2.0})
    assert doctor.check_workers(nodes) is True  # 2 slots: room for the minimum
    assert "scaling.min_workers=2..scaling.num_workers=3 (elastic)" in out.getvalue()
    assert scaling_config(cfg.scaling, doctor.use_gpu).num_workers == (2, 3)
    cfg = load_config(None, ["scaling.num_workers=3", "scaling.min_workers=3", "scaling.accelerator=cpu"])
    assert Doctor(cfg, "/tmp", out=out).check_workers(nodes) is False
