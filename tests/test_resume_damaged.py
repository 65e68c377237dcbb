"""Resuming past damaged or deleted checkpoints on the embedded Ray (2 CPU workers, tiny model).

One interrupted run (srresnet, 8 steps, checkpoints every 2 steps; a worker killed at step 5 while
the step-4 checkpoint is truncated, then, after the one restart allowed, a worker raising at step
7) is made once per module; the other tests resume their own copy after damaging it the way a user
or a crash would. A run directory copies cleanly: checkpoints are found by their
folders, and Ray Train's list of them is dropped before each run (``driver.forget_ray_checkpoint_list``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import fault_plan, training_photos
from test_training import steps_per_event_file, tiny_config

from srgan_dist.driver import RunError, run_training

pytestmark = pytest.mark.slow
NAME = "partial"
DAMAGE_LINE = "skipped damaged checkpoint(s), resuming from step-00000002"


def config(photos, storage: Path, *overrides: str):
    return tiny_config(
        photos, storage, NAME, "train.stages=[srresnet]", "srresnet.checkpoint_interval=2",
        "srresnet.iterations=8", "srresnet.num_to_keep=3", *overrides,
    )  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    return training_photos(tmp_path_factory)


@pytest.fixture(scope="module")
def interrupted_run(ray_local, photos, tmp_path_factory) -> Path:
    """A run that met both kinds of crash: a worker dies at step 5 and takes the newest checkpoint
    (step 4) down with it, so Ray Train's restart is handed a damaged one; after the one restart
    allowed, a worker raises at step 7. Left: good checkpoints at steps 2, 4 (written again by the
    restart) and 6."""
    storage = tmp_path_factory.mktemp("interrupted")
    stage_dir = storage / NAME / f"{NAME}-srresnet"
    marker = storage / "died-once"
    hooks = {
        "die": {
            "stage": "srresnet", "step": 5, "rank": 1, "marker": str(marker),
            "truncate": str(stage_dir / "step-00000004" / "state.pt"),
        },
        "raise": {"stage": "srresnet", "step": 7, "rank": 0},
    }  # fmt: skip
    with (
        fault_plan(hooks),
        pytest.raises(RunError, match=r"stage srresnet failed \(train.max_failures=1 restart"),
    ):
        run_training(config(photos, storage, "train.max_failures=1"))
    assert marker.exists()  # the worker really died
    assert sorted(p.name for p in stage_dir.glob("step-*")) == [f"step-0000000{s}" for s in (2, 4, 6)]
    return storage / NAME


def test_a_checkpoint_damaged_while_a_worker_dies_is_skipped_by_the_restart(interrupted_run):
    attempts = steps_per_event_file(interrupted_run / "tensorboard" / "srresnet", "loss/content")
    assert attempts == [[1, 2, 3, 4], [3, 4, 5, 6]]  # Ray's latest (step 4) was skipped: from step 2
    log = (interrupted_run / "train.log").read_text()
    assert log.count(DAMAGE_LINE) == 1, log[-3000:]


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / NAME)
    return tmp_path / NAME / f"{NAME}-srresnet"


def lines_with(capfd, text: str, timeout_s: float = 20.0) -> list[str]:
    """Output lines holding ``text``; worker lines reach the driver's console a little late."""
    seen, deadline = "", time.monotonic() + timeout_s
    while True:
        out, err = capfd.readouterr()
        seen += out + err
        if text in seen or time.monotonic() > deadline:
            return [line for line in seen.splitlines() if text in line]
        time.sleep(0.5)


def test_a_deleted_newest_folder_and_a_truncated_next_one_resume_from_the_good_one(
    photos, interrupted_run, tmp_path, capfd
):
    """The newest checkpoint folder deleted (Ray Train's own list still names it) and the one
    before it truncated: the run resumes from the newest good one, step 2, and says why, once."""
    stage_dir = copy_of(interrupted_run, tmp_path)
    shutil.rmtree(stage_dir / "step-00000006")
    ray_list = tmp_path / NAME / "checkpoint_manager_snapshot.json"
    assert "step-00000006" in ray_list.read_text()  # Ray Train's list still names it
    state = stage_dir / "step-00000004" / "state.pt"
    os.truncate(state, state.stat().st_size // 2)

    summary = run_training(config(photos, tmp_path, "srresnet.num_to_keep=2"), resume=True)

    assert summary["stages"]["srresnet"]["steps"] == 8
    attempts = steps_per_event_file(tmp_path / NAME / "tensorboard" / "srresnet", "loss/content")
    assert attempts[-1] == [3, 4, 5, 6, 7, 8]  # from step 2: not the deleted 6, not the damaged 4
    damage = lines_with(capfd, DAMAGE_LINE)
    assert len(damage) == 1 and f"{state}: " in damage[0] and "truncated" in damage[0]
    assert "step-00000006" not in damage[0]  # a deleted folder is not a damaged checkpoint
    assert "step-00000002" not in ray_list.read_text()  # a fresh list: the one naming step 6 is gone
    # srresnet.num_to_keep=2 holds: steps 6 and 8 are the newest, the rewritten 4 and step 2 pruned.
    assert sorted(p.name for p in stage_dir.glob("step-*")) == ["step-00000006", "step-00000008"]


def test_no_good_checkpoint_fails_at_once_without_restarts(photos, interrupted_run, tmp_path):
    stage_dir = copy_of(interrupted_run, tmp_path)
    for step in (2, 4, 6):
        os.truncate(stage_dir / f"step-0000000{step}" / "state.pt", 100)

    started = time.perf_counter()
    with pytest.raises(RunError) as error:
        run_training(config(photos, tmp_path, "train.max_failures=3"), resume=True)
    print(f"failed after {time.perf_counter() - started:.1f} s")  # 3 restarts would add ~10 s each

    message = str(error.value)
    assert message.startswith("stage srresnet cannot start: no usable checkpoint in ")
    for step in (2, 4, 6):
        assert f"step-0000000{step}/state.pt: 100 bytes" in message
    assert "\n" not in message and "weights_only" not in message
    assert sorted(p.name for p in stage_dir.glob("step-*")) == [f"step-0000000{s}" for s in (2, 4, 6)]
    # No worker got as far as training: only the interrupted run's two attempts are in TensorBoard.
    assert len(steps_per_event_file(tmp_path / NAME / "tensorboard" / "srresnet", "loss/content")) == 2
