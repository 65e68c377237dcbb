"""Config tree: presets, overrides, strict keys and types, validation, path resolution."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from srgan_dist.config import (
    VGG19_LAYERS,
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    resolve_paths,
    to_yaml,
)

REPO = Path(__file__).resolve().parents[1]
PRESETS = [REPO / "configs" / "demo.yaml", REPO / "configs" / "div2k_x4.yaml"]


def _error(overrides: list[str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_preset_round_trips_through_yaml(preset: Path, tmp_path: Path) -> None:
    cfg = load_config(preset)
    assert cfg != Config()  # the preset changed something, so the round trip is not trivial
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_config(saved) == cfg
    # Other code reads a run's config.yaml with plain PyYAML: that must give the same tree.
    assert config_from_dict(yaml.safe_load(saved.read_text())) == cfg


def test_preset_values_are_read_not_defaulted() -> None:
    cfg = load_config(PRESETS[0])
    raw = yaml.safe_load(PRESETS[0].read_text())  # the demo's numbers change as it is tuned
    assert (cfg.model.num_blocks, cfg.model.channels, cfg.model.norm) == (4, 32, "none")
    assert cfg.srresnet.iterations == raw["srresnet"]["iterations"] != 1_000_000
    assert cfg.srresnet.lr == pytest.approx(float(raw["srresnet"]["lr"]))
    assert cfg.srgan.lr_milestones == raw["srgan"]["lr_milestones"] != [100_000]
    assert cfg.scaling.num_workers == 2
    assert cfg.loss.vgg_random_fallback is True


def test_div2k_preset_is_the_paper_recipe() -> None:
    cfg = load_config(PRESETS[1])
    assert (cfg.model.scale, cfg.model.num_blocks, cfg.model.channels, cfg.model.norm) == (4, 16, 64, "batch")
    assert cfg.train.stages == ["srresnet", "srgan"]
    for stage in (cfg.srresnet, cfg.srgan):
        assert (stage.batch_size, stage.hr_patch_size) == (16, 96)
        assert stage.lr == pytest.approx(1e-4)
    assert cfg.srresnet.iterations == 1_000_000
    assert cfg.srresnet.lr_milestones == []
    assert cfg.srgan.iterations == 200_000
    assert cfg.srgan.lr_milestones == [100_000]
    assert cfg.srgan.lr_gamma == pytest.approx(0.1)
    assert cfg.loss.content == "mse"
    assert cfg.loss.content_weight_srgan == 0.0
    assert cfg.loss.perceptual_layer == "54"
    assert cfg.loss.perceptual_scale == pytest.approx(1 / 12.75, rel=1e-12)
    assert cfg.loss.adversarial_weight == pytest.approx(1e-3)
    assert cfg.loss.vgg_weights == "imagenet"
    assert cfg.loss.vgg_random_fallback is False  # a real run must not silently use random VGG


def test_overrides_set_values_and_beat_the_yaml() -> None:
    cfg = load_config(
        PRESETS[0],
        [
            "srresnet.iterations=50",  # the YAML says 600
            "srgan.lr_milestones=[10, 20]",
            "data.train=/abs/photos",
            "model.norm=batch",
            "loss.perceptual_layer='22'",
            "train.compile=true",
        ],
    )
    assert cfg.srresnet.iterations == 50
    assert cfg.srgan.lr_milestones == [10, 20]
    assert cfg.data.train == "/abs/photos"
    assert cfg.model.norm == "batch"
    assert cfg.loss.perceptual_layer == "22"
    assert cfg.train.compile is True
    assert cfg.srresnet.batch_size == 8  # untouched YAML values survive


def test_string_keys_take_override_text_as_written(tmp_path: Path) -> None:
    # YAML would read these as a float, null, a bool and a float; as run names they are text.
    for name in ("1e5", "null", "yes", "2024.10"):
        assert load_config(None, [f"run.name={name}"]).run.name == name
    assert load_config(None, ["run.name='quoted'"]).run.name == "quoted"
    assert load_config(None, ["data.train=/photos/off"]).data.train == "/photos/off"
    assert load_config(None, ["srresnet.lr=1e5"]).srresnet.lr == 1e5  # number keys still parse
    preset = tmp_path / "p.yaml"
    preset.write_text("run:\n  name: 1.5\n")  # in a file, YAML types stand: that is a number
    with pytest.raises(ConfigError, match=r"run\.name: must be a string"):
        load_config(preset)


def test_override_without_preset_and_empty_value() -> None:
    cfg = load_config(None, ["data.val=", "scaling.num_workers=8"])
    assert cfg.data.val == ""
    assert cfg.scaling.num_workers == 8
    assert cfg.srresnet.iterations == 1_000_000  # code default


def test_yaml_12_scalars_in_overrides_and_files(tmp_path: Path) -> None:
    # PyYAML alone reads 1e-4 as a string and `off` as False; both are valid values here.
    cfg = load_config(None, ["srresnet.lr=1e-4", "srgan.lr=2E-5", "train.amp=off"])
    assert cfg.srresnet.lr == pytest.approx(1e-4)
    assert cfg.srgan.lr == pytest.approx(2e-5)
    assert cfg.train.amp == "off"
    preset = tmp_path / "p.yaml"
    preset.write_text("srresnet:\n  lr: 5e-4\ntrain:\n  amp: off\n")
    cfg = load_config(preset)
    assert (cfg.srresnet.lr, cfg.train.amp) == (pytest.approx(5e-4), "off")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("modle.scale=4", "modle"),
        ("model.scael=4", "model.scael"),
        ("srgan.lr_milestone=[1]", "srgan.lr_milestone"),
        ("model.scale.x=1", "model.scale"),
    ],
)
def test_unknown_keys_via_override_are_named(override: str, key: str) -> None:
    message = _error([override])
    assert message.startswith(f"{key}:")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("modle:\n  scale: 4\n", "modle"),
        ("model:\n  scael: 4\n", "model.scael"),
        ("train:\n  stages: [srresnet]\n  sed: 3\n", "train.sed"),
    ],
)
def test_unknown_keys_in_yaml_are_named(tmp_path: Path, text: str, key: str) -> None:
    preset = tmp_path / "bad.yaml"
    preset.write_text(text)
    message = _error([], preset)
    assert message.startswith(f"{key}: unknown key")
    assert str(preset) in message


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("srresnet.iterations=many", "srresnet.iterations", "integer"),
        ("srresnet.iterations=true", "srresnet.iterations", "integer"),
        ("srresnet.iterations=10.5", "srresnet.iterations", "integer"),
        ("model.scale='4'", "model.scale", "integer"),
        ("srgan.lr_milestones=[10, x]", "srgan.lr_milestones[1]", "integer"),
        ("srgan.lr_milestones=10", "srgan.lr_milestones", "list"),
        ("srresnet.lr=fast", "srresnet.lr", "number"),
        ("srresnet.lr=true", "srresnet.lr", "number"),
        ("train.compile=1", "train.compile", "true or false"),
        ("run.name=[a, b]", "run.name", "ASCII letters"),
        ("model=4", "model", "mapping"),
        ("model.norm=layer", "model.norm", "one of"),
        ("data.loader=opencv", "data.loader", "one of"),
        ("train.stages=[srresnet, esrgan]", "train.stages[1]", "one of"),
    ],
)
def test_wrong_types_are_named(override: str, key: str, words: str) -> None:
    message = _error([override])
    assert message.startswith(f"{key}:")
    assert words in message


def test_number_like_text_fields_keep_their_text() -> None:
    """YAML reads `22` as an int; for text fields such as a VGG layer or a run name that is text."""
    cfg = load_config(None, ["loss.perceptual_layer=22", "run.name=2024"])
    assert (cfg.loss.perceptual_layer, cfg.run.name) == ("22", "2024")


def test_int_accepted_for_float_field() -> None:
    cfg = load_config(None, ["scaling.cpus_per_worker=2"])
    assert cfg.scaling.cpus_per_worker == 2.0
    assert isinstance(cfg.scaling.cpus_per_worker, float)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.scale=4", "srresnet.hr_patch_size=90"], "srresnet.hr_patch_size"),
        (["model.scale=8", "srgan.hr_patch_size=100"], "srgan.hr_patch_size"),  # srresnet 96 % 8 == 0
        (["srgan.hr_patch_size=8", "model.scale=2"], "srgan.hr_patch_size"),  # too small
        (["model.scale=3"], "model.scale"),
        (["model.scale=16"], "model.scale"),
        (["srresnet.iterations=-1"], "srresnet.iterations"),
        (["srgan.iterations=-5"], "srgan.iterations"),
        (["srresnet.lr=0"], "srresnet.lr"),
        (["srresnet.lr=-1.0e-4"], "srresnet.lr"),
        (["srgan.lr=.inf"], "srgan.lr"),
        (["srgan.lr_gamma=0"], "srgan.lr_gamma"),
        (["srgan.lr_gamma=1.5"], "srgan.lr_gamma"),
        (["srgan.lr_milestones=[20, 10]"], "srgan.lr_milestones"),
        (["srgan.lr_milestones=[10, 10]"], "srgan.lr_milestones"),
        (["srgan.lr_milestones=[0, 10]"], "srgan.lr_milestones"),
        (["srresnet.batch_size=0"], "srresnet.batch_size"),
        (["srresnet.log_interval=0"], "srresnet.log_interval"),
        (["train.stages=[srgan, srresnet]"], "train.stages"),
        (["train.stages=[srresnet, srresnet]"], "train.stages"),
        (["train.stages=[]"], "train.stages"),
        (["loss.perceptual_layer='55'"], "loss.perceptual_layer"),
        (["loss.perceptual_layer='13'"], "loss.perceptual_layer"),
        (["loss.perceptual_layer='60'"], "loss.perceptual_layer"),
        (["loss.perceptual_layer=conv5_4"], "loss.perceptual_layer"),
        (["loss.adversarial_weight=-0.001"], "loss.adversarial_weight"),
        (["loss.perceptual_scale=.nan"], "loss.perceptual_scale"),
        (["loss.vgg_weights="], "loss.vgg_weights"),
        (["scaling.num_workers=0"], "scaling.num_workers"),
        (["run.name=a/b"], "run.name"),
        (["run.storage="], "run.storage"),
        (["data.num_threads=0"], "data.num_threads"),
    ],
)
def test_impossible_values_are_named(overrides: list[str], key: str) -> None:
    assert _error(overrides).startswith(f"{key}:")


def test_valid_edge_values_pass() -> None:
    cfg = load_config(
        None,
        [
            "model.scale=8",
            "srresnet.hr_patch_size=16",
            "srgan.hr_patch_size=64",
            "srresnet.iterations=0",
            "srgan.lr_gamma=1",
            "train.stages=[srgan]",
            "loss.perceptual_layer='22'",
        ],
    )
    assert cfg.model.scale == 8 and cfg.train.stages == ["srgan"]


def test_vgg_layer_list_matches_the_model() -> None:
    from srgan_dist.models import VGG_LAYER_NAMES

    assert set(VGG19_LAYERS) == set(VGG_LAYER_NAMES)


def test_bad_override_syntax() -> None:
    assert "key.path=value" in _error(["srresnet.iterations"])
    assert "bad key" in _error(["srresnet..iterations=3"])


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml does not exist"):
        load_config(missing)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("model: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "mapping"),
        ("[]\n", "mapping"),
        ("42\n", "mapping"),
    ],
)
def test_bad_yaml_files_are_named(tmp_path: Path, text: str, words: str) -> None:
    preset = tmp_path / "broken.yaml"
    preset.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(preset)
    assert str(preset) in str(info.value)
    assert words in str(info.value)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    preset = tmp_path / "empty.yaml"
    preset.write_text("# nothing\n")
    assert load_config(preset) == Config()


def test_required_stage_iterations(tmp_path: Path) -> None:
    # Sections replace nothing but the keys they name: a partial stage keeps the other defaults.
    cfg = config_from_dict({"srgan": {"batch_size": 4}})
    assert cfg.srgan.iterations == 200_000 and cfg.srgan.batch_size == 4


def test_resolve_paths(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "data.train=photos/train",
            "data.val=/abs/val",
            "data.cache_dir=",
            "run.storage=s3://bucket/runs",
            "loss.vgg_weights=weights/vgg19.pth",
        ],
    )
    resolved = resolve_paths(cfg, base=tmp_path)
    assert resolved.data.train == str((tmp_path / "photos" / "train").resolve())
    assert Path(resolved.data.train).is_absolute()
    assert resolved.data.val == "/abs/val"
    assert resolved.data.cache_dir == ""  # empty means "no node-local cache", keep it empty
    assert resolved.run.storage == "s3://bucket/runs"
    assert resolved.loss.vgg_weights == str((tmp_path / "weights" / "vgg19.pth").resolve())
    assert cfg.data.train == "photos/train"  # the input is not mutated
    # keywords are not paths
    for keyword in ("imagenet", "random"):
        kept = resolve_paths(
            dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, vgg_weights=keyword))
        )
        assert kept.loss.vgg_weights == keyword


def test_resolve_paths_defaults_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    resolved = resolve_paths(load_config(None, ["run.storage=runs"]))
    assert resolved.run.storage == str(tmp_path.resolve() / "runs")
