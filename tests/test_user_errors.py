"""Inputs a careless or hostile user gives: each gets one line naming the value or path, and no
traceback (exit code 2 for training, the command's error code elsewhere)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from srgan_dist.cli import main
from srgan_dist.config import Config, ConfigError, load_saved_config, to_yaml
from srgan_dist.generator_io import GeneratorSpec, save_generator
from srgan_dist.vgg_weights import load_vgg19_features

ROOT = Path(__file__).resolve().parents[1]


def one_line(err: str, *names: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    ("override", "key", "problem"),
    [
        (
            'data.val=!!python/object/apply:os.system ["touch /tmp/srgan-dist-pwned"]',
            "data.val",
            "constructor",
        ),
        ("srresnet.iterations=[1,", "srresnet.iterations", "line 1, column 4"),
    ],
)
def test_bad_yaml_in_an_override_is_one_line(override, key, problem, capsys, tmp_path):
    argv = ["train", "--config", str(ROOT / "configs/demo.yaml"), "--storage", str(tmp_path), override]
    assert main(argv) == 2
    one_line(capsys.readouterr().err, f"override {key}", "not valid YAML", problem)
    assert not Path("/tmp/srgan-dist-pwned").exists()


def test_a_saved_config_with_a_python_tag_is_refused_naming_the_file(tmp_path):
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(Config()).replace("  loader: dali", "  loader: !!python/name:os.system", 1))
    with pytest.raises(
        ConfigError, match=rf"config file {saved} is not valid YAML \(could not determine a constructor"
    ):
        load_saved_config(saved)
    saved.write_text("run: {name: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{saved}"):
        load_saved_config(saved)


class NotATensor:
    pass


def test_vgg_weights_that_are_a_pickle_or_empty_are_one_line_without_torchs_advice(tmp_path):
    pickled = tmp_path / "evil.pth"
    torch.save({"features.0.weight": NotATensor()}, pickled)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    raw_pickle = tmp_path / "raw.pth"
    raw_pickle.write_bytes(pickle.dumps({"a": 1}))
    for path, expected in (
        (pickled, "refused: it holds objects other than tensors"),
        (empty, "empty or cut short"),
        (raw_pickle, str(raw_pickle)),
    ):
        with pytest.raises(Exception) as info:
            load_vgg19_features(str(path))
        message = str(info.value)
        assert expected in message and str(path) in message
        assert "\n" not in message
        assert "weights_only=False" not in message and "add_safe_globals" not in message


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_to_a_folder_that_cannot_be_written_is_one_line(fmt, tmp_path, capsys):
    spec = GeneratorSpec(scale=4, num_blocks=1, channels=8, norm="batch", stage="srgan")
    weights = tmp_path / "generator_srgan.safetensors"
    save_generator(spec.build(), spec, weights)
    target = f"/proc/srgan-dist-{fmt}.out"
    assert main(["export", "--weights", str(weights), "--format", fmt, "--output", target]) == 2
    one_line(capsys.readouterr().err, target, "cannot be written")


def test_export_replaces_a_planted_link_instead_of_writing_through_it(tmp_path, capsys):
    spec = GeneratorSpec(scale=4, num_blocks=1, channels=8, norm="batch", stage="srgan")
    weights = tmp_path / "generator_srgan.safetensors"
    save_generator(spec.build(), spec, weights)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "g.pt").symlink_to(victim)
    assert (
        main(["export", "--weights", str(weights), "--format", "torchscript", "--output", str(out / "g.pt")])
        == 0
    )
    assert victim.read_text() == "keep me"
    assert not (out / "g.pt").is_symlink() and (out / "g.pt").stat().st_size > 1000


def test_more_workers_than_the_embedded_rays_machine_has_cores_is_refused_before_ray(tmp_path):
    """In a process of its own: one that already joined Ray (the session's, in other tests) trains
    on that Ray, which is not the embedded one."""
    import os
    import subprocess
    import sys

    (tmp_path / "photos").mkdir()
    storage = tmp_path / "runs"
    command = [
        sys.executable, "launch.py", "--config", "configs/demo.yaml", "--storage", str(storage),
        "--workers", "1000", f"data.train={tmp_path / 'photos'}", f"data.val={tmp_path / 'photos'}",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    line = one_line(result.stderr, "scaling.num_workers=1000", f"{os.cpu_count()} CPU core(s)")
    assert "--address" in line
    assert not storage.exists()  # nothing of the run was written


def test_a_resumed_run_whose_config_yaml_holds_a_python_tag_is_one_line(capsys, tmp_path):
    run = tmp_path / "demo"
    run.mkdir()
    (run / "config.yaml").write_text(
        to_yaml(Config()).replace("  loader: dali", "  loader: !!python/name:os.system", 1)
    )
    argv = [
        "train",
        "--config",
        str(ROOT / "configs/demo.yaml"),
        "--storage",
        str(tmp_path),
        "--name",
        "demo",
        "--resume",
    ]
    assert main(argv) == 2
    one_line(
        capsys.readouterr().err.replace(f"Full log: {run / 'train.log'}", "").strip(),
        str(run / "config.yaml"),
        "not valid YAML",
    )


def test_a_full_disk_among_the_workers_failures_is_picked_for_the_one_line():
    from srgan_dist.driver import storage_full

    failures = (
        "  worker rank 0: stage srresnet, after step 20: OSError: [Errno 28] No space left on device\n"
        "  worker rank 1: stage srresnet, after step 20: RuntimeError: connection reset"
    )
    assert (
        storage_full(failures)
        == "worker rank 0: stage srresnet, after step 20: OSError: [Errno 28] No space left on device"
    )
    assert storage_full("  worker rank 0: RuntimeError: boom") is None
