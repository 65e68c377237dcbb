"""The run record without Ray: ``summary.json``, the stage stop files, "which stage is first
unfinished" (also for a run in cloud storage, read by a process that did not write it), and the
one config a run writes and trains with, resumed after a random-VGG fallback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from srgan_dist import driver, run_record, storage
from srgan_dist.config import load_config
from srgan_dist.run_record import (
    NonFiniteStop,
    StageRecord,
    StageStartError,
    clear_stops,
    first_unfinished_stage,
    read_stop,
    read_summary,
    record_stage,
    unfinished_stages,
    write_stop,
)
from srgan_dist.rundir import RunDir
from srgan_dist.stages import STAGE_NAMES
from srgan_dist.vgg_weights import VGGWeightsUnavailable

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
FIRST, LAST = STAGE_NAMES[0], STAGE_NAMES[-1]


def finished(run_dir: RunDir, stage: str, **metrics: float) -> None:
    """What rank 0 leaves once ``stage`` is done: its generator, then its summary entry."""
    run_dir.generator(stage).parent.mkdir(parents=True, exist_ok=True)
    run_dir.generator(stage).with_suffix(".json").write_text("{}")
    run_dir.generator(stage).write_bytes(b"weights")
    run_dir.push_generator(stage)
    cfg = load_config(DEMO)
    record_stage(run_dir, stage, StageRecord.from_metrics(cfg, stage, {"step": 7, **metrics}, 1.234))


@pytest.fixture
def bucket(tmp_path, monkeypatch) -> Path:
    """``s3://bucket/...`` is a local folder, and each test's working copies start empty."""
    root = tmp_path / "bucket"

    def where(uri: str) -> Path:
        return root / uri.removeprefix("s3://")

    def upload(local: Path, uri: str) -> None:
        where(uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, where(uri))

    def download(uri: str, local: Path) -> bool:
        if not where(uri).is_file():
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(where(uri), local)
        return True

    monkeypatch.setattr(storage, "upload", upload)
    monkeypatch.setattr(storage, "download", download)
    monkeypatch.setattr(storage, "delete", lambda uri: where(uri).unlink(missing_ok=True))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-writer"))
    return root


def reader_on_another_node(monkeypatch, tmp_path: Path, uri: str) -> RunDir:
    """The same run as a process on another machine sees it: its own, empty working copy."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-reader"))
    return RunDir.at(uri)


def test_summary_json_keeps_every_stage_and_names_the_run(tmp_path):
    run_dir = RunDir(tmp_path / "demo")
    assert read_summary(run_dir).stages == {}
    finished(run_dir, FIRST, **{"val/psnr": 25.0, "val/psnr_raw": 24.5})
    finished(run_dir, LAST)
    on_disk = json.loads(run_dir.summary_file.read_text())
    assert list(on_disk) == ["stages", "run"]
    assert on_disk["run"] == {"name": "demo", "run_dir": str(run_dir.root)}
    assert list(on_disk["stages"]) == [FIRST, LAST]
    assert on_disk["stages"][FIRST]["val_psnr_raw"] == 24.5 and on_disk["stages"][FIRST]["steps"] == 7
    assert "val_psnr_raw" not in on_disk["stages"][LAST]  # only when an EMA was kept
    assert on_disk["stages"][LAST]["generator"] == run_dir.generator(LAST).name
    summary = read_summary(run_dir)
    assert summary.stages[FIRST].wall_time_s == 1.23 and summary.stages[LAST].val_psnr is None
    assert summary.to_json() == on_disk
    assert not list(run_dir.root.glob(".*tmp*"))  # written through a temporary file


def test_the_first_unfinished_stage_needs_an_entry_and_the_generator(tmp_path):
    run_dir = RunDir(tmp_path / "demo")
    assert first_unfinished_stage(run_dir, STAGE_NAMES) == FIRST
    finished(run_dir, FIRST)
    assert first_unfinished_stage(run_dir, STAGE_NAMES) == LAST
    assert unfinished_stages(run_dir, STAGE_NAMES) == [LAST]
    finished(run_dir, LAST)
    assert first_unfinished_stage(run_dir, STAGE_NAMES) is None
    assert unfinished_stages(run_dir, STAGE_NAMES) == []
    run_dir.generator(FIRST).unlink()  # recorded, but its generator is gone: trained again
    assert unfinished_stages(run_dir, STAGE_NAMES) == list(STAGE_NAMES)


def test_a_process_on_another_node_reads_the_record_from_cloud_storage(bucket, tmp_path, monkeypatch):
    """The driver's failure path and check after the run, and a restarted rank 0, read what rank 0
    wrote elsewhere: the record is pulled, not taken from this machine's (stale) working copy."""
    uri = "s3://bucket/runs/demo"
    writer = RunDir.at(uri)
    reader = reader_on_another_node(monkeypatch, tmp_path, uri)
    assert first_unfinished_stage(reader, STAGE_NAMES) == FIRST  # the reader's copy: no stage done
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-writer"))
    finished(writer, FIRST)
    write_stop(writer, NonFiniteStop(stage=LAST, step=3, skipped_steps=1, last_checkpoint_step=2))

    reader = reader_on_another_node(monkeypatch, tmp_path, uri)
    assert first_unfinished_stage(reader, STAGE_NAMES) == LAST
    assert reader.generator(FIRST).is_file()  # pulled with the summary
    cfg = load_config(DEMO, [f"train.stages=[{FIRST},{LAST}]"])
    with pytest.raises(driver.RunError, match=rf"^stage {LAST}: non-finite loss at step 3 \(1 step"):
        driver.check_stages_finished(cfg, reader)


def test_a_failed_run_names_the_stage_the_bucket_says_else_the_local_copy(bucket, tmp_path, monkeypatch):
    uri = "s3://bucket/runs/demo"
    cfg = load_config(DEMO, [f"train.stages=[{FIRST},{LAST}]"])
    reader = reader_on_another_node(monkeypatch, tmp_path, uri)
    assert driver.failed_stage(cfg, reader) == FIRST
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-writer"))
    finished(RunDir.at(uri), FIRST)  # rank 0, on another node, finished the first stage
    reader = reader_on_another_node(monkeypatch, tmp_path, uri)
    assert driver.failed_stage(cfg, reader) == LAST

    def outage(uri: str, local: Path) -> bool:
        raise storage.StorageError(f"downloading to {local} from {uri} failed: Could not connect")

    monkeypatch.setattr(storage, "download", outage)  # the storage is what failed: its error is
    assert driver.failed_stage(cfg, reader) == LAST  # Ray's; the working copy names the stage


def test_stop_files_are_typed_and_cleared(tmp_path):
    run_dir = RunDir(tmp_path / "demo")
    assert read_stop(run_dir, FIRST, StageStartError) is None
    error = StageStartError(stage=FIRST, rank=1, message="model.scale: must be 2 or 4")
    write_stop(run_dir, error)
    assert json.loads(run_dir.stage_error(FIRST).read_text()) == {
        "stage": FIRST,
        "rank": 1,
        "message": "model.scale: must be 2 or 4",
    }
    assert read_stop(run_dir, FIRST, StageStartError) == error
    assert read_stop(run_dir, FIRST, NonFiniteStop) is None
    clear_stops(run_dir, FIRST)
    assert read_stop(run_dir, FIRST, StageStartError) is None


def test_the_done_line_is_what_the_driver_waits_for():
    line = run_record.done_line(LAST, "s3://b/r/generator.safetensors")
    assert line == f"Stage {LAST}: done, exported s3://b/r/generator.safetensors"
    assert line.startswith(run_record.done_line_prefix(LAST))


def test_the_saved_config_is_the_one_workers_train_with_and_a_random_vgg_run_resumes(monkeypatch):
    """config.yaml holds the VGG weights the workers used; --resume compares the frozen keys with
    what the workers would use now."""
    available = {"imagenet": False}

    def load(weights, allow_random_fallback=False):
        if weights == "imagenet" and not available["imagenet"]:
            raise VGGWeightsUnavailable("could not load torchvision VGG19 ImageNet weights (offline)")

    monkeypatch.setattr("srgan_dist.vgg_weights.load_vgg19_features", load)
    asked = load_config(DEMO, ["loss.vgg_weights=imagenet", "loss.vgg_random_fallback=true"])
    run_dir = RunDir(Path("/runs/demo"))
    saved = driver.run_config(asked)
    assert saved.loss.vgg_weights == "random"  # what config.yaml, the workers and checkpoints get

    driver.check_resume(saved, driver.run_config(asked), run_dir)  # still offline: falls back again
    available["imagenet"] = True  # the same command once ImageNet weights load: another loss
    with pytest.raises(driver.RunError, match=r"loss: .*'random'.* -> .*'imagenet'") as refused:
        driver.check_resume(saved, driver.run_config(asked), run_dir)
    assert "pass loss.vgg_weights=random to continue it as it began" in str(refused.value)
    as_it_began = load_config(DEMO, ["loss.vgg_weights=random", "loss.vgg_random_fallback=true"])
    driver.check_resume(saved, driver.run_config(as_it_began), run_dir)
    driver.check_resume(None, driver.run_config(asked), run_dir)  # a new run: nothing to compare


def test_a_run_with_imagenet_vgg_is_not_resumed_with_random_weights_on_a_machine_without_them(monkeypatch):
    def load(weights, allow_random_fallback=False):
        if weights == "imagenet":
            raise VGGWeightsUnavailable("could not load torchvision VGG19 ImageNet weights (offline)")

    monkeypatch.setattr("srgan_dist.vgg_weights.load_vgg19_features", load)
    saved = load_config(DEMO, ["loss.vgg_weights=imagenet"])  # trained where the weights loaded
    here = load_config(DEMO, ["loss.vgg_weights=imagenet", "loss.vgg_random_fallback=true"])
    with pytest.raises(driver.RunError, match="cannot load the VGG19 weights the run names, imagenet"):
        driver.check_resume(saved, driver.run_config(here), RunDir(Path("/runs/demo")))
