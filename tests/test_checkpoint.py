"""Checkpoint folders without Ray: the manifest, what it catches, and newest-good selection.

Also per-stage pruning, and the driver's removal of Ray's list of checkpoints (plain files; no
Ray instance is started).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from srgan_dist.config import Config
from srgan_dist.driver import forget_ray_checkpoint_list
from srgan_dist.rundir import RunDir
from srgan_dist.train import checkpoint as ckpt

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train 2.60's name for it


def write(stage_dir: Path, step: int, stage: str = "srresnet") -> Path:
    """A checkpoint folder as ``StageCheckpoints.save`` writes it (tiny state)."""
    directory = stage_dir / ckpt.checkpoint_dir_name(step)
    directory.mkdir(parents=True)
    state = {"step": step, "weights": torch.arange(256, dtype=torch.float32) * step}
    ckpt.save_checkpoint(directory, state, stage, f"run:\n  name: test-{step}\n")
    return directory


def rewrite_manifest(directory: Path) -> None:
    """What a careful attacker does after replacing a file: make the manifest agree again."""
    manifest = json.loads((directory / ckpt.MANIFEST_FILE).read_text())
    for name, entry in manifest["files"].items():
        entry["size"] = (directory / name).stat().st_size
        entry["sha256"] = ckpt._sha256(directory / name)
    (directory / ckpt.MANIFEST_FILE).write_text(json.dumps(manifest))


def test_manifest_lists_every_file_and_is_written_last(tmp_path):
    directory = write(tmp_path, 2)
    manifest = json.loads((directory / ckpt.MANIFEST_FILE).read_text())["files"]
    assert set(manifest) == {ckpt.STATE_FILE, ckpt.META_FILE, "config.yaml"}
    for name, entry in manifest.items():
        assert entry["size"] == (directory / name).stat().st_size
        assert len(entry["sha256"]) == 64
    assert sorted(p.name for p in directory.iterdir()) == sorted([*manifest, ckpt.MANIFEST_FILE])
    assert (directory / ckpt.MANIFEST_FILE).stat().st_mtime_ns >= max(
        (directory / name).stat().st_mtime_ns for name in manifest
    )
    assert torch.equal(ckpt.load_checkpoint(directory, "srresnet")["weights"], torch.arange(256.0) * 2)


def test_truncated_state_is_named_with_its_size(tmp_path):
    directory = write(tmp_path, 2)
    state = directory / ckpt.STATE_FILE
    size = state.stat().st_size
    os.truncate(state, size // 2)
    with pytest.raises(ckpt.CheckpointError) as error:
        ckpt.load_checkpoint(directory, "srresnet")
    assert str(error.value).startswith(str(state))
    assert f"{size // 2} bytes, manifest.json says {size} (truncated" in str(error.value)


def test_bit_flip_in_state_is_caught_by_the_checksum(tmp_path):
    directory = write(tmp_path, 2)
    state = directory / ckpt.STATE_FILE
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=rf"{state.name}: sha256 differs from manifest\.json"):
        ckpt.load_checkpoint(directory, "srresnet")


def test_missing_manifest_means_incomplete_and_missing_file_is_named(tmp_path):
    incomplete = write(tmp_path, 2)
    (incomplete / ckpt.MANIFEST_FILE).unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"manifest\.json: missing, the checkpoint is incomplete"):
        ckpt.load_checkpoint(incomplete, "srresnet")
    partial = write(tmp_path, 4)
    (partial / "config.yaml").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"config\.yaml: missing \(listed in manifest\.json\)"):
        ckpt.load_checkpoint(partial, "srresnet")
    garbled = write(tmp_path, 6)
    (garbled / ckpt.MANIFEST_FILE).write_text('{"files": {')
    with pytest.raises(ckpt.CheckpointError, match=r"manifest\.json: unreadable"):
        ckpt.load_checkpoint(garbled, "srresnet")


class Payload:
    """Unpickling this runs code: it creates the file named in ``target``."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_malicious_state_is_refused_without_running_it(tmp_path):
    pwned = tmp_path / "pwned"
    directory = write(tmp_path, 2)
    torch.save({"step": 2, "weights": Payload(pwned)}, directory / ckpt.STATE_FILE)
    # Swapped in without touching the manifest: refused before anything is unpickled.
    with pytest.raises(ckpt.CheckpointError, match=r"(bytes|sha256)"):
        ckpt.load_checkpoint(directory, "srresnet")
    # With a manifest that agrees: torch's weights-only unpickler refuses it, and the message
    # does not suggest weights_only=False.
    rewrite_manifest(directory)
    with pytest.raises(ckpt.CheckpointError, match="refused: it holds objects other than tensors") as error:
        ckpt.load_checkpoint(directory, "srresnet")
    assert "weights_only" not in str(error.value) and "\n" not in str(error.value)
    assert not pwned.exists()


def test_newest_good_skips_damaged_and_foreign_folders(tmp_path):
    stage_dir = tmp_path / "run-srresnet"
    assert ckpt.load_newest_good(stage_dir, "srresnet") is None  # no folder yet: start the stage
    for step in (2, 4, 6, 8):
        write(stage_dir, step)
    (stage_dir / "step-00000008" / ckpt.MANIFEST_FILE).unlink()  # incomplete
    os.truncate(stage_dir / "step-00000006" / ckpt.STATE_FILE, 10)  # truncated
    shutil.copytree(stage_dir / "step-00000002", stage_dir / "step-00000009.old")  # not a step folder
    (stage_dir / SNAPSHOT).write_text("{}")

    point = ckpt.load_newest_good(stage_dir, "srresnet")
    assert point is not None and point.name == "step-00000004" and point.state["step"] == 4
    assert [str(e).split(":")[0] for e in point.damaged] == [
        str(stage_dir / "step-00000008" / ckpt.MANIFEST_FILE),
        str(stage_dir / "step-00000006" / ckpt.STATE_FILE),
    ]


def test_no_usable_checkpoint_is_one_error_listing_each_and_deletes_nothing(tmp_path):
    stage_dir = tmp_path / "run-srgan"
    write(stage_dir, 2, stage="srgan")
    write(stage_dir, 4, stage="srresnet")  # another stage's checkpoint is not a fallback
    os.truncate(stage_dir / "step-00000002" / ckpt.STATE_FILE, 10)
    with pytest.raises(ckpt.CheckpointError) as error:
        ckpt.load_newest_good(stage_dir, "srgan")
    message = str(error.value)
    assert message.startswith(f"no usable checkpoint in {stage_dir}: ") and "\n" not in message
    assert "step-00000004: checkpoint of stage 'srresnet', expected 'srgan'" in message
    assert "step-00000002/state.pt: 10 bytes" in message
    assert sorted(p.name for p in stage_dir.iterdir()) == ["step-00000002", "step-00000004"]


def test_pruning_keeps_the_newest_of_the_stage_up_to_the_step_just_written(tmp_path):
    stage_dir = tmp_path / "run-srresnet"
    for step in (2, 4, 6, 8):
        write(stage_dir, step)
    # Step 8 is left from an attempt that got further (say, damaged and skipped on resume): the
    # run is back at step 6, and step 8 is neither counted nor deleted.
    deleted = ckpt.prune_checkpoints(stage_dir, keep=2, newest_step=6)
    assert deleted == ["step-00000002"]
    assert sorted(p.name for p in stage_dir.iterdir()) == ["step-00000004", "step-00000006", "step-00000008"]
    assert ckpt.prune_checkpoints(stage_dir, keep=2, newest_step=6) == []
    other_stage = tmp_path / "run-srgan"
    write(other_stage, 2)
    ckpt.prune_checkpoints(stage_dir, keep=1, newest_step=8)
    assert sorted(p.name for p in stage_dir.iterdir()) == ["step-00000008"]
    assert (other_stage / "step-00000002").is_dir()  # another stage's folder is its own


def test_stage_checkpoints_save_through_report_prune_and_resume_from_the_newest(tmp_path):
    """Rank 0 hands a staged folder to ``report``, whose ``persist`` stores it in the stage's
    folder, prunes to ``num_to_keep`` and removes the staging folder; other ranks report none."""
    run_dir = RunDir.of(tmp_path, "run")
    stage_dir = run_dir.checkpoints("srresnet")
    stage_cfg = dataclasses.replace(Config().srresnet, num_to_keep=2)
    reported = []

    def report(metrics, name, upload):
        reported.append((metrics["step"], upload is not None, name))
        if upload is not None:
            assert not upload.background  # background_upload is off by default
            upload.persist()
            assert not upload.staging.exists()

    rank0, rank1 = (
        ckpt.StageCheckpoints(run_dir, "srresnet", stage_cfg, "run: {}\n", rank, report) for rank in (0, 1)
    )
    for step in (2, 4, 6):
        for checkpoints in (rank0, rank1):
            checkpoints.save({"step": step, "weights": torch.full((4,), float(step))}, {"step": step})
    assert reported[-2:] == [(6, True, "step-00000006"), (6, False, "step-00000006")]
    assert rank0.last_saved == rank1.last_saved == 6
    assert ckpt.list_checkpoints(stage_dir) == ["step-00000006", "step-00000004"]

    resuming = ckpt.StageCheckpoints(run_dir, "srresnet", stage_cfg, "", 0, report)
    point = resuming.newest_good()
    assert point is not None and point.name == "step-00000006" and point.damage_note() == ""
    assert torch.equal(point.state["weights"], torch.full((4,), 6.0)) and resuming.last_saved == 6


def test_ray_checkpoint_list_is_forgotten_and_no_checkpoint_is_touched(tmp_path):
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    assert CHECKPOINT_MANAGER_SNAPSHOT_FILENAME == SNAPSHOT
    run_dir = RunDir(tmp_path / "run")
    write(run_dir.checkpoints("srresnet"), 2)
    snapshot = run_dir.root / SNAPSHOT
    snapshot.write_text(
        json.dumps({"checkpoint_results": [{"checkpoint_dir_name": "run-srresnet/step-00000001"}]})
    )
    forget_ray_checkpoint_list(run_dir)
    assert not snapshot.exists()
    assert (run_dir.checkpoints("srresnet") / "step-00000002").is_dir()
    forget_ray_checkpoint_list(run_dir)  # none there: nothing to do


def test_a_stage_whose_only_checkpoint_a_full_disk_cut_short_restarts_only_when_asked(tmp_path):
    """After a full disk the only checkpoint's state.pt is cut short: ``--resume`` stops with one
    line saying how to start the stage over, and ``train.on_unusable_checkpoints=restart`` does."""
    run_dir = RunDir.of(tmp_path, "run")
    stage_dir = run_dir.checkpoints("srresnet")
    state = write(stage_dir, 4) / ckpt.STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    checkpoints = ckpt.StageCheckpoints(run_dir, "srresnet", Config().srresnet, "", 0, lambda *a: None)
    with pytest.raises(ckpt.NoUsableCheckpoint, match=r"train\.on_unusable_checkpoints=restart") as error:
        checkpoints.newest_good()
    assert "\n" not in str(error.value) and "(truncated or changed)" in str(error.value)
    assert checkpoints.newest_good(restart_if_unusable=True) is None
    assert checkpoints.restart_note.startswith(f"no usable checkpoint in {stage_dir} (")
    assert "training the stage from its start" in checkpoints.restart_note
    assert (stage_dir / "step-00000004").is_dir()  # nothing is deleted


def staged_saves(tmp_path, keep: int, background: bool):
    """Rank 0's ``StageCheckpoints`` of a run in ``tmp_path`` and the uploads its ``report`` got
    (not yet stored: the test runs each ``persist`` when it wants, like Ray Train's upload thread)."""
    run_dir = RunDir.of(tmp_path, "run")
    stage_cfg = dataclasses.replace(Config().srresnet, num_to_keep=keep)
    uploads: list[ckpt.CheckpointUpload] = []
    checkpoints = ckpt.StageCheckpoints(
        run_dir,
        "srresnet",
        stage_cfg,
        "run: {}\n",
        0,
        lambda metrics, name, upload: uploads.append(upload),
        background,
    )

    def save(step: int, wait: bool = False) -> ckpt.CheckpointUpload:
        checkpoints.save({"step": step, "weights": torch.full((4,), float(step))}, {"step": step}, wait=wait)
        return uploads[-1]

    return run_dir.checkpoints("srresnet"), save


def test_a_checkpoint_is_stored_file_by_file_with_the_manifest_last(tmp_path, monkeypatch):
    """Ray Train's own upload copies a folder's files in no set order; ours stores the manifest
    after every file it lists."""
    copied = []
    real_copyfile = shutil.copyfile
    monkeypatch.setattr(
        ckpt.shutil,
        "copyfile",
        lambda source, target: copied.append(Path(source).name) or real_copyfile(source, target),
    )
    stage_dir, save = staged_saves(tmp_path, keep=2, background=False)
    save(2).persist()
    assert copied == [*ckpt.MANIFEST_FILES, ckpt.MANIFEST_FILE]
    ckpt.verify_checkpoint(stage_dir / "step-00000002")


def test_an_upload_cut_short_is_skipped_on_resume_in_one_line_and_pruning_waits_for_it(tmp_path, monkeypatch):
    """A crash while a checkpoint is copied leaves a folder without a manifest: a resume names it
    in one line and takes the one before, which pruning (num_to_keep=1) has not deleted. The
    staging folder stays for a retry, which completes the checkpoint and then prunes."""
    stage_dir, save = staged_saves(tmp_path, keep=1, background=True)
    save(2).persist()
    cut_short = save(4)
    real_copyfile = shutil.copyfile

    def crash_on_meta(source, target):
        if Path(source).name == ckpt.META_FILE:
            raise OSError("connection lost")
        return real_copyfile(source, target)

    monkeypatch.setattr(ckpt.shutil, "copyfile", crash_on_meta)
    with pytest.raises(OSError, match="connection lost"):
        cut_short.persist()
    assert ckpt.list_checkpoints(stage_dir) == ["step-00000004", "step-00000002"]
    point = ckpt.load_newest_good(stage_dir, "srresnet")
    assert point.name == "step-00000002"
    note = point.damage_note()
    assert "\n" not in note
    assert (
        f"{stage_dir / 'step-00000004' / ckpt.MANIFEST_FILE}: missing, the checkpoint is incomplete" in note
    )
    assert cut_short.staging.is_dir()

    monkeypatch.setattr(ckpt.shutil, "copyfile", real_copyfile)
    cut_short.persist()  # the retry
    assert ckpt.list_checkpoints(stage_dir) == ["step-00000004"]
    assert not cut_short.staging.exists()


def test_background_uploads_leave_retention_to_after_each_manifest(tmp_path):
    """With background uploads ``save`` returns before the checkpoint is stored, and nothing is
    pruned until it is: the newest complete checkpoint survives while the next one uploads.
    A ``wait`` save (a preemption notice) is stored before ``report`` returns."""
    stage_dir, save = staged_saves(tmp_path, keep=1, background=True)
    save(2).persist()
    first, second = save(4), save(6)
    assert first.background and second.background
    assert ckpt.list_checkpoints(stage_dir) == ["step-00000002"]  # both still uploading
    first.persist()  # Ray Train's upload thread: one at a time, in report order
    assert ckpt.list_checkpoints(stage_dir) == ["step-00000004"]
    second.persist()
    assert ckpt.list_checkpoints(stage_dir) == ["step-00000006"]
    assert not save(8, wait=True).background


def test_ray_train_uploads_checkpoints_one_at_a_time():
    """Pruning inside each upload relies on it: Ray Train 2.60 stores async checkpoints on one
    thread, in the order they were reported."""
    from ray.train.v2._internal.execution.context import MAX_CHECKPOINT_UPLOAD_THREADS

    assert MAX_CHECKPOINT_UPLOAD_THREADS == 1
