"""Bad inputs fail before any work, in one line, and nothing is lost or half-made (issue 10, §4-5).

Every case goes through the real command line (``srgan-dist ...`` via ``cli.main`` or
``launch.py`` in a subprocess) and checks the exit code and that stderr names the file or key in
one line, without a traceback. No test here starts Ray: ``connect_ray`` is replaced by a stub that
fails, so a run that gets that far is caught.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo, write_photos
from PIL import Image

from srgan_dist import driver
from srgan_dist.cli import main
from srgan_dist.config import ConfigError, RunConfig
from srgan_dist.generator_io import GeneratorSpec, save_generator

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


def one_line_error(err: str, *names: str) -> str:
    """The single stderr line that names every one of ``names``; no traceback anywhere."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if all(name in line for name in names)]
    assert lines, f"no stderr line names {names}: {err!r}"
    return lines[0]


class RayWasAsked(RuntimeError):
    pass


@pytest.fixture
def no_ray(monkeypatch):
    """``connect_ray`` fails loudly: pre-flight errors must come before it."""

    def refuse(*args, **kwargs):
        raise RayWasAsked("connect_ray was called")

    monkeypatch.setattr(driver, "connect_ray", refuse)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_photos(root / "train", 2, (64, 64), seed=1)
    return root / "train"


def train_argv(photos: Path, storage: Path, *extra: str) -> list[str]:
    return [
        "train", "--config", DEMO, "--storage", str(storage), f"data.train={photos}", "data.val=",
        "train.stages=[srresnet]", *extra,
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Run names and storage


@pytest.mark.parametrize("name", ["trïal", "名前", "two words", "tab\there", "-starts-with-dash", "a" * 201])
def test_run_names_ray_or_filesystems_choke_on_are_rejected(name):
    with pytest.raises(ConfigError, match=r"^run\.name: .*letters, digits"):
        RunConfig(name=name)


@pytest.mark.parametrize("name", ["demo", "x4-run_2.b", "2024", "A" * 200])
def test_plain_ascii_run_names_are_accepted(name):
    assert RunConfig(name=name).name == name


def test_non_ascii_name_fails_in_preflight(photos, tmp_path, capsys, no_ray):
    rc = main(train_argv(photos, tmp_path / "runs", "--name", "trïal"))
    assert rc == 2
    one_line_error(capsys.readouterr().err, "run.name", "trïal")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("flag", "key"), [("--name", "run.name"), ("--storage", "run.storage")])
def test_empty_name_or_storage_is_an_error_not_the_default(flag, key, photos, tmp_path, capsys, no_ray):
    argv = train_argv(photos, tmp_path / "runs", "--name", "n")
    argv[argv.index(flag) + 1] = ""
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, key)


@pytest.mark.parametrize(("flag", "key"), [("--name", "run.name"), ("--storage", "run.storage")])
def test_submit_rejects_an_empty_name_or_storage(flag, key, tmp_path, capsys):
    argv = ["submit", "--config", DEMO, "--working-dir", str(ROOT), "--storage", "/shared/runs"]
    argv += ["--name", "n"]
    argv[argv.index(flag) + 1] = ""
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, key)


def test_storage_that_is_a_file_fails_in_preflight(photos, tmp_path, capsys, no_ray):
    storage = tmp_path / "not_a_folder"
    storage.write_text("a file")
    assert main(train_argv(photos, storage, "--name", "n")) == 2
    one_line_error(capsys.readouterr().err, "run.storage", str(storage))
    nested = storage / "deeper"
    assert main(train_argv(photos, nested, "--name", "n")) == 2
    one_line_error(capsys.readouterr().err, "run.storage", str(storage))


def test_config_yaml_is_written_only_once_the_run_starts(photos, tmp_path, capsys, no_ray):
    """A run that fails while connecting leaves no config.yaml, so re-running needs no --resume."""
    argv = train_argv(photos, tmp_path / "runs", "--name", "n")
    for _ in range(2):  # the second attempt is not told "already holds a run"
        with pytest.raises(RayWasAsked):
            main(argv)
        assert not (tmp_path / "runs" / "n" / "config.yaml").exists()


# ---------------------------------------------------------------------------------------------
# Overrides anywhere on the line


def test_overrides_are_accepted_after_options_in_launch_py(photos, tmp_path):
    """``launch.py --config X a=1 --name n b=2``: both overrides reach the config (here the
    run stops at a bad value in the second one, which shows it was read)."""
    argv = [sys.executable, str(ROOT / "launch.py"), "--config", DEMO, f"data.train={photos}"]
    argv += ["--name", "n", "--storage", str(tmp_path), "srresnet.iterations=-6"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    one_line_error(done.stderr, "srresnet.iterations", "must be >= 0")


def test_train_and_submit_take_overrides_anywhere(photos, tmp_path, capsys, no_ray, monkeypatch):
    seen = {}

    def record(cfg, **kwargs):
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr(driver, "run_training", record)
    argv = ["train", "--config", DEMO, "srresnet.iterations=5", "--name", "n", "srgan.iterations=3"]
    assert main([*argv, "--workers", "2", "srresnet.iterations=6"]) == 0
    cfg = seen["cfg"]
    assert (cfg.srresnet.iterations, cfg.srgan.iterations, cfg.run.name) == (6, 3, "n")  # last wins

    submitted = {}
    from srgan_dist import jobs

    monkeypatch.setattr(
        jobs, "submit", lambda request, address: submitted.setdefault("r", request).submission_id
    )
    argv = ["submit", "--config", DEMO, "--working-dir", str(ROOT), "srresnet.iterations=5"]
    argv += ["--name", "n", "--storage", "/shared/runs", "srgan.iterations=3"]
    assert main(argv) == 0
    assert submitted["r"].entrypoint.endswith("srresnet.iterations=5 srgan.iterations=3")


def test_unknown_options_are_still_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", DEMO, "--nmae", "n", "a.b=1"])
    assert exit_info.value.code == 2
    assert "--nmae" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["upscale", "--weights", "w", "--input", "i", "--output", "o", "a.b=1"])
    assert "a.b=1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# prepare / upscale / evaluate outputs


def test_prepare_into_an_existing_file_is_a_one_line_error(photos, tmp_path, capsys):
    out = tmp_path / "out.png"
    out.write_text("not a folder")
    assert main(["prepare", str(photos), str(out), "--workers", "1", "--no-progress"]) == 1
    one_line_error(capsys.readouterr().err, str(out))
    assert out.read_text() == "not a folder"


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    spec = GeneratorSpec(scale=4, num_blocks=1, channels=8, norm="none", stage="srresnet")
    return save_generator(spec.build(), spec, tmp_path / "generator_srresnet.safetensors")


def test_upscale_refuses_to_overwrite_unless_asked(weights, tmp_path, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_photos(inputs, 3, (16, 16))
    out.mkdir()
    (out / "photo_0_001.png").write_bytes(b"keep me")
    argv = ["upscale", "--weights", str(weights), "--input", str(inputs), "--output", str(out)]
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, str(out / "photo_0_001.png"), "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["photo_0_001.png"]  # nothing written at all
    assert (out / "photo_0_001.png").read_bytes() == b"keep me"

    assert main([*argv, "--overwrite"]) == 0
    assert len(list(out.iterdir())) == 3
    assert Image.open(out / "photo_0_001.png").size == (64, 64)


def test_upscale_output_that_is_a_file_is_a_one_line_error(weights, tmp_path, capsys):
    photo = write_photos(tmp_path / "in", 1, (16, 16))[0]
    out = tmp_path / "out"
    out.write_text("a file")
    argv = ["upscale", "--weights", str(weights), "--input", str(photo), "--output", str(out)]
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, "--output", str(out))


def test_evaluate_scores_good_images_and_lists_bad_ones(weights, tmp_path, capsys):
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(make_photo((32, 32), 1)).save(hr / "good.png")
    Image.fromarray(make_photo((10, 10), 2)).save(hr / "tiny.png")
    (hr / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    report = tmp_path / "eval.json"
    argv = ["evaluate", "--weights", str(weights), "--hr", str(hr), "--tile", "0", "--json", str(report)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    one_line_error(captured.err, "tiny.png")
    one_line_error(captured.err, "broken.png")
    assert "good.png" in captured.out
    saved = json.loads(report.read_text())
    assert [entry["name"] for entry in saved["images"]] == ["good.png"]
    assert sorted(entry["file"] for entry in saved["failed"]) == ["broken.png", "tiny.png"]
    assert all(entry["reason"] for entry in saved["failed"])
    assert np.isfinite(saved["mean"]["psnr_model"])


def test_evaluate_checks_the_json_path_before_scoring(weights, tmp_path, capsys, monkeypatch):
    hr = tmp_path / "hr"
    write_photos(hr, 1, (32, 32))
    import srgan_dist.evaluate

    def must_not_run(*args, **kwargs):
        raise AssertionError("scored before checking --json")

    monkeypatch.setattr(srgan_dist.evaluate, "evaluate", must_not_run)
    for target in (tmp_path / "missing" / "eval.json", hr):
        argv = ["evaluate", "--weights", str(weights), "--hr", str(hr), "--json", str(target)]
        assert main(argv) == 2
        one_line_error(capsys.readouterr().err, "--json", str(target))


# ---------------------------------------------------------------------------------------------
# submit to an unreachable Ray address


def test_submit_to_a_closed_gcs_port_fails_fast_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    argv = ["submit", "--entrypoint", "true", "--name", "n", "--working-dir", str(tmp_path)]
    assert main(argv) == 1
    one_line_error(capsys.readouterr().err, "127.0.0.1:1")


# ---------------------------------------------------------------------------------------------
# Joining a Ray cluster is part of pre-flight: a bounded wait and one line, nothing written


def test_a_job_server_url_as_ray_address_is_refused_in_one_line(
    photos, tmp_path, monkeypatch, capsys, no_ray
):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert main(train_argv(photos, tmp_path, "--name", "url")) == 2
    line = one_line_error(capsys.readouterr().err, "RAY_ADDRESS=http://127.0.0.1:8265", "job server")
    assert "srgan-dist submit" in line
    assert not (tmp_path / "url" / "config.yaml").exists()


def test_a_closed_gcs_port_fails_within_seconds_without_a_half_made_run(photos, tmp_path, capsys, no_ray):
    import time

    started = time.monotonic()
    assert main(train_argv(photos, tmp_path, "--name", "closed", "--address", "127.0.0.1:1")) == 2
    assert time.monotonic() - started < 60  # Ray alone waits without a limit here
    one_line_error(capsys.readouterr().err, "--address=127.0.0.1:1", "no Ray cluster answers")
    assert not (tmp_path / "closed" / "config.yaml").exists()


def test_an_address_of_another_cluster_than_the_process_joined_is_refused(
    photos, tmp_path, monkeypatch, capsys, no_ray
):
    """A process that already called ``ray.init`` (a notebook, a test) stays on that Ray: an
    address naming another cluster is refused rather than silently ignored."""
    import socket
    import types

    import ray

    joined = socket.create_server(("127.0.0.1", 0))  # "another cluster": something that answers
    other = socket.create_server(("127.0.0.1", 0))
    with joined, other:
        joined_address = f"127.0.0.1:{joined.getsockname()[1]}"
        other_address = f"127.0.0.1:{other.getsockname()[1]}"
        monkeypatch.setattr(ray, "is_initialized", lambda: True)
        context = types.SimpleNamespace(gcs_address=joined_address)
        monkeypatch.setattr(ray, "get_runtime_context", lambda: context)

        assert main(train_argv(photos, tmp_path, "--name", "other", "--address", other_address)) == 2
        line = one_line_error(capsys.readouterr().err, f"--address={other_address}", joined_address)
        assert "ray.shutdown()" in line
        assert not (tmp_path / "other" / "config.yaml").exists()

        # The cluster already joined, by name or by address, goes on to connect (the stub here).
        for same in (joined_address, f"localhost:{joined.getsockname()[1]}", "auto"):
            with pytest.raises(RayWasAsked):
                main(train_argv(photos, tmp_path, "--name", "same", "--address", same))


@pytest.mark.slow
def test_a_cluster_ray_cannot_join_from_this_process_is_refused_in_one_line(
    two_node_cluster, photos, tmp_path
):
    """The session's cluster (cluster/local_cluster.sh: loopback only, token auth), joined by GCS
    address without what `local_cluster.sh env` prints. Ray alone retries a refused token for 20 s
    and then says only "Failed to connect"; without its single-machine switch it dials this
    machine's IP instead of 127.0.0.1, where nothing listens, for many minutes."""
    from ray._private.services import node_ip_address_from_perspective

    cluster = two_node_cluster
    env = {k: v for k, v in cluster.env.items() if k != "RAY_ADDRESS"}
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")} | {"RAY_AUTH_MODE": "disabled"}
    cases = {"no-token": (no_token, "refused this process's authentication", "RAY_AUTH_TOKEN_PATH")}
    if not node_ip_address_from_perspective().startswith("127."):  # a machine with a routable IP
        no_switch = {k: v for k, v in env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        cases["no-switch"] = (no_switch, "nothing answers there", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0")
    for name, (case_env, reason, fix) in cases.items():
        argv = [sys.executable, str(ROOT / "launch.py"), *train_argv(photos, tmp_path, "--name", name)[1:]]
        argv += ["--address", cluster.gcs_address]
        done = subprocess.run(argv, env=case_env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        line = one_line_error(done.stderr, f"--address={cluster.gcs_address}", reason)
        assert fix in line and "no run was started" in line
        assert not (tmp_path / name / "config.yaml").exists()
