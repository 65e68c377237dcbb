"""End-to-end training on the embedded Ray (2 CPU workers, gloo, tiny model and images).

Each test drives ``run_training`` in-process against the session's Ray instance and checks what a
user relies on: the run directory contract, TensorBoard contents, restarts and resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import write_photos
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from srgan_dist.config import config_from_dict, load_config, to_dict
from srgan_dist.driver import RunError, run_training
from srgan_dist.generator_io import load_generator

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("photos")
    write_photos(root / "train", 6, (64, 64), seed=1)
    write_photos(root / "val", 2, (48, 48), seed=2)
    return {"train": root / "train", "val": root / "val"}


def tiny_config(photos: dict[str, Path], storage: Path, name: str, *overrides: str):
    """The demo preset shrunk to seconds: 1 residual block, 8 channels, 32 px crops, batch 2."""
    base = [
        f"data.train={photos['train']}",
        f"data.val={photos['val']}",
        "data.val_grid_images=2",
        "data.val_grid_crop=32",
        "model.num_blocks=1",
        "model.channels=8",
        "model.disc_channels=8",
        "loss.vgg_weights=random",
        "scaling.num_workers=2",
        f"run.storage={storage}",
        f"run.name={name}",
        "train.max_failures=1",
    ]
    for stage, steps in (("srresnet", 6), ("srgan", 4)):
        base += [
            f"{stage}.iterations={steps}",
            f"{stage}.batch_size=2",
            f"{stage}.hr_patch_size=32",
            f"{stage}.log_interval=1",
            f"{stage}.val_interval=3",
            f"{stage}.checkpoint_interval=2",
            f"{stage}.lr_milestones=[]",
        ]
    return load_config(ROOT / "configs" / "demo.yaml", base + list(overrides))


def scalars(log_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def steps_per_event_file(log_dir: Path, tag: str) -> list[list[int]]:
    """Steps logged for ``tag`` in each event file, oldest file first (one file per attempt)."""
    result = []
    for path in sorted(log_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        steps = [
            event.step
            for event in EventFileLoader(str(path)).Load()
            for value in event.summary.value
            if value.tag == tag
        ]
        if steps:  # the hparams summary goes to a file of its own
            result.append(steps)
    return result


def test_two_stage_run_fills_the_run_directory(ray_local, photos, tmp_path):
    cfg = tiny_config(photos, tmp_path, "full", "srgan.lr=1e-12")
    summary = run_training(cfg)
    run_dir = tmp_path / "full"

    # config.yaml is the resolved config and loads back to the same tree.
    saved = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert to_dict(saved)["model"] == to_dict(cfg)["model"]
    assert saved.data.train == str(photos["train"])

    # summary.json: both stages, exact step counts, model and bicubic numbers.
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == summary
    for stage, steps in (("srresnet", 6), ("srgan", 4)):
        entry = on_disk["stages"][stage]
        assert entry["completed"] and entry["steps"] == steps and entry["workers"] == 2
        assert entry["samples_per_s"] > 0 and entry["wall_time_s"] > 0
        assert 5 < entry["val_psnr_bicubic"] < 60 and 0 < entry["val_ssim_bicubic"] <= 1
        assert entry["val_psnr"] is not None and 0 < entry["val_ssim"] <= 1
        # Ray Train's checkpoints, one step-N folder each, the last at the final step.
        checkpoints = sorted(p.name for p in (run_dir / f"full-{stage}").glob("step-*"))
        assert checkpoints[-1] == f"step-{steps:08d}"

    # Exported generators load, and stage 2 started from stage 1's weights (lr 1e-12 barely moves them).
    _, spec = load_generator(run_dir / "generator_srresnet.safetensors")
    assert (spec.stage, spec.step, spec.channels) == ("srresnet", 6, 8)
    assert json.loads((run_dir / "generator_srgan.json").read_text())["stage"] == "srgan"
    first = load_file(run_dir / "generator_srresnet.safetensors")
    second = load_file(run_dir / "generator_srgan.safetensors")
    assert all((first[k] - second[k]).abs().max() < 1e-6 for k in first)
    assert load_generator(run_dir)[1].stage == "srgan"  # a run directory means its final model

    # TensorBoard: every loss term, D probabilities, lr, speed, data wait, validation, image grid.
    g_only = scalars(run_dir / "tensorboard" / "srresnet")
    for tag in (
        "loss/content",
        "loss/total",
        "lr/generator",
        "perf/samples_per_s",
        "perf/data_wait_fraction",
    ):
        assert [e.step for e in g_only.Scalars(tag)] == [1, 2, 3, 4, 5, 6], tag
    assert [e.step for e in g_only.Scalars("val/psnr")] == [3, 6]
    assert [e.step for e in g_only.Scalars("val/psnr_bicubic")] == [3, 6]
    assert {"val/ssim", "val/ssim_bicubic"} <= set(g_only.Tags()["scalars"])
    grid = g_only.Images("val/bicubic_sr_hr")[-1]
    # 2 images x (bicubic | SR | HR) crops of 32 px with 4 px padding.
    assert (grid.width, grid.height) == (3 * 32 + 4 * 4, 2 * 32 + 3 * 4)
    gan = scalars(run_dir / "tensorboard" / "srgan")
    for tag in (
        "loss/perceptual",
        "loss/adversarial",
        "loss/discriminator",
        "disc/real_prob",
        "disc/fake_prob",
    ):
        assert len(gan.Scalars(tag)) == 4, tag
    assert (run_dir / "tensorboard" / "srgan").glob("events.*")

    # Running it again with --resume skips both finished stages and changes nothing.
    mtime = (run_dir / "generator_srgan.safetensors").stat().st_mtime
    assert run_training(cfg, resume=True)["stages"] == summary["stages"]
    assert (run_dir / "generator_srgan.safetensors").stat().st_mtime == mtime

    # Starting a new run under the same name without --resume is refused, before any training.
    with pytest.raises(RunError, match="--resume"):
        run_training(cfg)
    with pytest.raises(RunError, match="model"):
        run_training(
            tiny_config(photos, tmp_path, "full", "srgan.lr=1e-12", "model.channels=16"), resume=True
        )


def test_a_dying_worker_resumes_from_the_latest_checkpoint(ray_local, photos, tmp_path):
    marker = tmp_path / "died-once"
    hooks = {"die": {"stage": "srresnet", "step": 5, "rank": 1, "marker": str(marker)}}
    cfg = tiny_config(
        photos, tmp_path, "restart", "train.stages=[srresnet]", "srresnet.checkpoint_interval=3"
    )
    summary = run_training(cfg, test_hooks=hooks)

    assert marker.exists()  # the worker really died
    assert summary["stages"]["srresnet"]["steps"] == 6
    log_dir = tmp_path / "restart" / "tensorboard" / "srresnet"
    attempts = steps_per_event_file(log_dir, "loss/content")
    assert len(attempts) == 2
    assert attempts[0] == [1, 2, 3, 4]  # died during step 5, before logging it
    assert attempts[1] == [4, 5, 6]  # resumed from the step-3 checkpoint: one interval repeated at most
    # TensorBoard's purge makes the curve continuous: one value per step, no rewound stretch.
    assert [e.step for e in scalars(log_dir).Scalars("loss/content")] == [1, 2, 3, 4, 5, 6]


def test_driver_rerun_skips_finished_stage_and_resumes_on_fewer_workers(ray_local, photos, tmp_path):
    marker = tmp_path / "died-once"
    hooks = {"die": {"stage": "srgan", "step": 3, "rank": 0, "marker": str(marker)}}
    cfg = tiny_config(photos, tmp_path, "rerun", "train.max_failures=0")
    with pytest.raises(Exception, match=r"(?i)fail|error"):
        run_training(cfg, test_hooks=hooks)  # the "driver" gives up: stage srgan unfinished
    run_dir = tmp_path / "rerun"
    assert json.loads((run_dir / "summary.json").read_text())["stages"].keys() == {"srresnet"}
    exported = (run_dir / "generator_srresnet.safetensors").stat().st_mtime

    summary = run_training(tiny_config(photos, tmp_path, "rerun", "scaling.num_workers=1"), resume=True)
    assert (run_dir / "generator_srresnet.safetensors").stat().st_mtime == exported  # skipped
    assert summary["stages"]["srgan"]["steps"] == 4 and summary["stages"]["srgan"]["workers"] == 1
    attempts = steps_per_event_file(run_dir / "tensorboard" / "srgan", "loss/total")
    assert attempts == [[1, 2], [3, 4]]  # resumed at the step-2 checkpoint with 1 worker


def test_nonfinite_loss_stops_the_stage_without_checkpointing_it(ray_local, photos, tmp_path):
    hooks = {"nan": {"stage": "srresnet", "step": 3}}
    cfg = tiny_config(photos, tmp_path, "nan", "train.stages=[srresnet]")
    with pytest.raises(RunError, match="non-finite loss at step 3"):
        run_training(cfg, test_hooks=hooks)
    run_dir = tmp_path / "nan"
    assert [p.name for p in (run_dir / "nan-srresnet").glob("step-*")] == ["step-00000002"]
    assert not (run_dir / "generator_srresnet.safetensors").exists()


def test_nonfinite_loss_can_be_skipped_and_counted(ray_local, photos, tmp_path):
    hooks = {"nan": {"stage": "srresnet", "step": 3}}
    cfg = tiny_config(photos, tmp_path, "skip", "train.stages=[srresnet]", "train.on_nonfinite=skip")
    summary = run_training(cfg, test_hooks=hooks)
    assert summary["stages"]["srresnet"]["steps"] == 6
    skips = scalars(tmp_path / "skip" / "tensorboard" / "srresnet").Scalars("train/nonfinite_skips")
    assert skips[-1].value == 1
