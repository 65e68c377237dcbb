"""export: ONNX (onnxruntime on two sizes), TorchScript, safetensors; parity failures are errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from srgan_dist import export as export_module
from srgan_dist.cli import main
from srgan_dist.generator_io import GeneratorSpec, load_generator, save_generator
from srgan_dist.models import generator_output_to_unit


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    for seed, stage in enumerate(("srresnet", "srgan")):
        torch.manual_seed(seed)
        spec = GeneratorSpec(scale=4, num_blocks=2, channels=16, norm="batch", stage=stage)
        save_generator(spec.build(), spec, run / f"generator_{stage}.safetensors")
    return run


def torch_upscale(run: Path, stage: str, lr: np.ndarray) -> np.ndarray:
    model, _ = load_generator(run, stage)
    with torch.inference_mode():
        return generator_output_to_unit(model(torch.from_numpy(lr))).numpy()


def test_onnx_export_has_dynamic_shapes_and_matches_pytorch(run_dir: Path, capsys) -> None:
    import onnx
    import onnxruntime

    assert main(["export", "--weights", str(run_dir), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert out.count("parity vs PyTorch") == 2 and "1x3x24x32 → 1x3x96x128" in out
    path = run_dir / "generator_srgan.onnx"  # the final stage, beside its weights
    metadata = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    assert metadata["scale"] == "4" and "srgan" in metadata["srgan_dist"]

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(3, 3, 11, 13), (1, 3, 30, 7)]:  # sizes the export's own check did not use
        lr = np.random.default_rng(0).random(shape, dtype=np.float32)
        sr = session.run(None, {"lr": lr})[0]
        assert sr.shape == (shape[0], 3, shape[2] * 4, shape[3] * 4)
        assert np.abs(sr - torch_upscale(run_dir, "srgan", lr)).max() < 1e-4


def test_torchscript_and_safetensors_exports(run_dir: Path, tmp_path: Path) -> None:
    script_path = tmp_path / "g.pt"
    argv = ["export", "--weights", str(run_dir), "--stage", "srresnet"]
    assert main([*argv, "--format", "torchscript", "--output", str(script_path)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(script_path))
    lr = np.random.default_rng(1).random((2, 3, 9, 15), dtype=np.float32)
    with torch.inference_mode():
        result = scripted(torch.from_numpy(lr)).numpy()
    np.testing.assert_allclose(result, torch_upscale(run_dir, "srresnet", lr), atol=1e-5)

    copy = tmp_path / "copy" / "generator_srresnet.safetensors"
    assert main([*argv, "--format", "safetensors", "--output", str(copy)]) == 0
    copied, spec = load_generator(copy)
    original, _ = load_generator(run_dir, "srresnet")
    assert spec.stage == "srresnet"
    for key, value in original.state_dict().items():
        assert torch.equal(copied.state_dict()[key], value)
    assert main([*argv, "--format", "safetensors"]) == 2  # would overwrite the source


def test_a_parity_miss_fails_the_export(run_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(export_module, "PARITY_TOLERANCE", -1.0)
    assert main(["export", "--weights", str(run_dir), "--format", "onnx"]) == 1
    assert "should not be used" in capsys.readouterr().err
