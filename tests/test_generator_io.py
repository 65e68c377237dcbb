"""Generator weight files: round trip, run-directory lookup, and errors that name the file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from srgan_dist import atomic, generator_io
from srgan_dist.generator_io import (
    FORMAT_VERSION,
    GeneratorSpec,
    WeightsError,
    find_generator,
    load_generator,
    save_generator,
    sidecar_path,
)
from srgan_dist.models import Generator

SPEC = GeneratorSpec(scale=2, num_blocks=2, channels=8, norm="batch", stage="srresnet", step=7)


def _trained_like_generator(seed: int = 0) -> Generator:
    """A small generator with non-default weights and BN statistics."""
    torch.manual_seed(seed)
    model = Generator(num_blocks=SPEC.num_blocks, channels=SPEC.channels, scale=SPEC.scale, norm=SPEC.norm)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model.train()
    model(torch.rand(4, 3, 8, 8))  # moves BN running stats away from their init
    return model.eval()


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Generator, Path]:
    model = _trained_like_generator()
    return model, save_generator(model, SPEC, tmp_path / "generator_srresnet.safetensors")


def test_round_trip_gives_identical_outputs(saved: tuple[Generator, Path]) -> None:
    model, path = saved
    assert path.is_file() and sidecar_path(path).is_file()
    assert sidecar_path(path).name == "generator_srresnet.json"
    assert sorted(p.name for p in path.parent.iterdir()) == [sidecar_path(path).name, path.name]  # no temp
    loaded, spec = load_generator(path)
    assert spec == SPEC
    assert not loaded.training
    lr = torch.rand(1, 3, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(lr), model(lr), rtol=0, atol=0)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_sidecar_lands_before_the_weights_readers_look_for(tmp_path: Path, monkeypatch) -> None:
    renamed: list[str] = []
    real_replace = atomic.os.replace

    def recording_replace(source, target):
        renamed.append(Path(target).name)
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", recording_replace)
    save_generator(_trained_like_generator(), SPEC, tmp_path / "generator_srresnet.safetensors")
    assert renamed == ["generator_srresnet.json", "generator_srresnet.safetensors"]


def test_a_failed_save_leaves_the_previous_generator_whole(saved, monkeypatch) -> None:
    model, path = saved
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(generator_io, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_generator(model, dataclasses.replace(SPEC, step=8), path)
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before


def test_sidecar_is_readable_json(saved: tuple[Generator, Path]) -> None:
    _, path = saved
    raw = json.loads(sidecar_path(path).read_text())
    assert raw["format"] == "srgan-dist-generator"
    assert raw["format_version"] == FORMAT_VERSION
    assert {k: raw[k] for k in ("scale", "num_blocks", "channels", "norm")} == {
        "scale": 2,
        "num_blocks": 2,
        "channels": 8,
        "norm": "batch",
    }


def test_loads_from_metadata_without_sidecar(saved: tuple[Generator, Path]) -> None:
    model, path = saved
    sidecar_path(path).unlink()
    loaded, spec = load_generator(path)
    assert spec == SPEC
    lr = torch.rand(1, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(lr), model(lr), rtol=0, atol=0)


def test_find_generator_in_run_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(WeightsError, match="no generator_<stage>"):
        find_generator(run.parent)
    resnet = save_generator(_trained_like_generator(0), SPEC, run / "generator_srresnet.safetensors")
    assert find_generator(run) == resnet
    gan_spec = GeneratorSpec(**{**SPEC.__dict__, "stage": "srgan", "step": 9})
    gan = save_generator(_trained_like_generator(1), gan_spec, run / "generator_srgan.safetensors")
    assert find_generator(run) == gan  # the later stage is the final model
    assert find_generator(run, stage="srresnet") == resnet
    assert find_generator(str(run), stage="srgan") == gan
    assert load_generator(run)[1].stage == "srgan"
    assert load_generator(run, stage="srresnet")[1].step == 7
    assert find_generator(resnet) == resnet  # a file is taken as is


def test_missing_stage_and_missing_path(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_generator(_trained_like_generator(), SPEC, run / "generator_srresnet.safetensors")
    with pytest.raises(WeightsError, match="srgan") as info:
        find_generator(run, stage="srgan")
    assert str(run) in str(info.value)
    with pytest.raises(WeightsError, match="no such file"):
        load_generator(tmp_path / "nowhere")


def _expect_error(path: Path, named: Path, match: str | None = None) -> str:
    with pytest.raises(WeightsError, match=match) as info:
        load_generator(path)
    assert str(named) in str(info.value)
    return str(info.value)


def test_garbage_file(tmp_path: Path) -> None:
    garbage = tmp_path / "generator_srgan.safetensors"
    garbage.write_bytes(b"\x00garbage" * 64)
    _expect_error(garbage, garbage, "safetensors")
    # with a valid sidecar the weights themselves are still checked
    sidecar_path(garbage).write_text(json.dumps(SPEC.to_json()))
    _expect_error(garbage, garbage, "safetensors")


def test_not_a_safetensors_suffix(tmp_path: Path) -> None:
    other = tmp_path / "generator.pth"
    torch.save(_trained_like_generator().state_dict(), other)
    _expect_error(other, other, "safetensors")


@pytest.mark.parametrize(
    ("sidecar_text", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something-else", "scale": 2}', "not a srgan-dist generator"),
        ("[1, 2, 3]", "not a srgan-dist generator"),
        ('{"format": "srgan-dist-generator", "format_version": 1, "scale": 2}', "lacks"),
    ],
)
def test_bad_sidecar(saved: tuple[Generator, Path], sidecar_text: str, match: str) -> None:
    _, path = saved
    sidecar_path(path).write_text(sidecar_text)
    _expect_error(path, sidecar_path(path), match)


def _edit_sidecar(path: Path, **changes: object) -> None:
    sidecar = sidecar_path(path)
    raw = json.loads(sidecar.read_text())
    raw.update(changes)
    sidecar.write_text(json.dumps(raw))


def test_newer_format_version(saved: tuple[Generator, Path]) -> None:
    _, path = saved
    _edit_sidecar(path, format_version=FORMAT_VERSION + 1)
    _expect_error(path, sidecar_path(path), "newer")


@pytest.mark.parametrize(
    "changes",
    [{"channels": 16}, {"num_blocks": 3}, {"num_blocks": 1}, {"scale": 4}, {"norm": "none"}],
)
def test_weights_not_matching_config(saved: tuple[Generator, Path], changes: dict) -> None:
    _, path = saved
    _edit_sidecar(path, **changes)
    _expect_error(path, path, "do not match")


@pytest.mark.parametrize("changes", [{"scale": 3}, {"norm": "layer"}, {"channels": "many"}])
def test_impossible_model_config(saved: tuple[Generator, Path], changes: dict) -> None:
    _, path = saved
    _edit_sidecar(path, **changes)
    with pytest.raises(WeightsError) as info:
        load_generator(path)
    assert str(path.with_suffix("")) in str(info.value)  # the weights file or its sidecar


def test_metadata_without_config(tmp_path: Path) -> None:
    path = tmp_path / "generator_srresnet.safetensors"
    save_file({k: v.contiguous() for k, v in _trained_like_generator().state_dict().items()}, str(path))
    _expect_error(path, path, "no model config")
    save_file({"x": torch.zeros(1)}, str(path), metadata={"srgan_dist": "{broken"})
    _expect_error(path, path, "not valid JSON")


def test_global_skip_round_trips_and_defaults_to_none_for_older_files(tmp_path: Path) -> None:
    spec = GeneratorSpec(scale=2, num_blocks=1, channels=8, norm="none", global_skip="bicubic")
    path = save_generator(spec.build(), spec, tmp_path / "generator_srresnet.safetensors")
    model, loaded = load_generator(path)
    assert loaded.global_skip == "bicubic" and model.global_skip == "bicubic"
    sidecar = json.loads(sidecar_path(path).read_text())
    del sidecar["global_skip"]  # what files written before the option look like
    sidecar_path(path).write_text(json.dumps(sidecar))
    assert load_generator(path)[1].global_skip == "none"


@pytest.fixture
def no_model_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if ``load_generator`` gets as far as building a generator."""

    def refuse(**kwargs: object) -> None:
        raise AssertionError(f"a generator was built from a tampered config: {kwargs}")

    monkeypatch.setattr(generator_io, "Generator", refuse)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"num_blocks": 1_000_000}, "num_blocks"),  # out of bounds
        ({"channels": 1e9}, "channels"),  # not an integer
        ({"channels": 1_000_000_000}, "channels"),  # out of bounds
        ({"num_blocks": True}, "num_blocks"),  # JSON true is not a count
        ({"step": -1}, "step"),
    ],
)
@pytest.mark.usefixtures("no_model_built")
def test_tampered_config_out_of_bounds_fails_before_any_model_is_built(
    saved: tuple[Generator, Path], changes: dict, key: str
) -> None:
    _, path = saved
    _edit_sidecar(path, **changes)
    message = _expect_error(path, sidecar_path(path), key)
    assert f"{key} must be" in message


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"num_blocks": 1000}, "num_blocks"),
        ({"channels": 4096}, "channels"),
        ({"scale": 8}, "scale"),
        ({"norm": "none"}, "norm"),
    ],
)
@pytest.mark.parametrize("where", ["sidecar", "metadata"])
@pytest.mark.usefixtures("no_model_built")
def test_tampered_config_within_bounds_is_checked_against_the_tensor_shapes(
    saved: tuple[Generator, Path], changes: dict, key: str, where: str
) -> None:
    model, path = saved
    tampered = json.dumps({**SPEC.to_json(), **changes})
    if where == "sidecar":
        sidecar_path(path).write_text(tampered)
    else:
        sidecar_path(path).unlink()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(path), metadata={"srgan_dist": tampered})
    message = _expect_error(path, path, "do not match")
    assert f"{key} is {changes[key]!r} in the config" in message
