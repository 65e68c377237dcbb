"""End-to-end training on an embedded Ray (2 CPU workers, gloo, tiny model and images).

The full two-stage run is ``python launch.py`` in a subprocess, as a user starts it (its own
embedded Ray), once per module: its tests read its run directory and its console. The fault tests
drive ``run_training`` in-process against the session's Ray instance, with a fault plan
(``conftest.fault_plan``).
What a user relies on: the run directory contract, TensorBoard contents, the console, restarts
and resumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import fault_plan, load_bench_script, training_photos
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from srgan_dist.commands import train as train_command
from srgan_dist.config import config_from_dict, load_config, to_dict
from srgan_dist.driver import RunError, run_training
from srgan_dist.generator_io import load_generator

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    return training_photos(tmp_path_factory)


def tiny_overrides(photos: dict[str, Path], storage: Path, name: str, *overrides: str) -> list[str]:
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
    return base + list(overrides)


def tiny_config(photos: dict[str, Path], storage: Path, name: str, *overrides: str):
    return load_config(ROOT / "configs" / "demo.yaml", tiny_overrides(photos, storage, name, *overrides))


# What Ray prints on a healthy run that a user cannot act on (issue 13); only in the log file.
RAY_NOISE = (
    "PreemptionWatcher",
    "authentication token",
    "Token authentication is enabled",
    "Reporting training result",
    "Checkpoint successfully created",
    "Started training worker group",
    "Attempting to start training worker group",
    "Downloading: https://download.pytorch.org",
    "RayTrainWorker pid=",
    "TrainController pid=",
)


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


def launch_args(overrides: list[str], *flags: str):
    """``python launch.py`` arguments, parsed as the command parses them."""
    parser = train_command.argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return parser.parse_args(["--config", str(ROOT / "configs" / "demo.yaml"), *flags, *overrides])


@pytest.fixture(scope="module")
def full_run(photos, tmp_path_factory) -> dict:
    """``python launch.py`` with both stages, its own embedded Ray: the console and the run dir."""
    storage = tmp_path_factory.mktemp("runs")
    overrides = tiny_overrides(photos, storage, "full", "srgan.lr=1e-12")
    command = [sys.executable, "launch.py", "--config", "configs/demo.yaml", *overrides]
    # Its own Ray temp dir: ray.init() would join a `ray start` cluster it finds in /tmp/ray.
    ray_tmp = tempfile.mkdtemp(prefix="srgan-ray-", dir="/tmp")  # short: Ray's socket paths
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": ray_tmp}
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        # What ran in Ray's worker processes, from its session logs (bench/startup.py's reader).
        ray_processes = [what for _, what in load_bench_script("startup").ray_processes(Path(ray_tmp), 0.0)]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return {
        "run_dir": storage / "full",
        "storage": storage,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "ray_processes": ray_processes,
    }


def test_two_stage_run_fills_the_run_directory(photos, full_run):
    tmp_path = full_run["storage"]
    cfg = tiny_config(photos, tmp_path, "full", "srgan.lr=1e-12")
    run_dir = full_run["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())

    # config.yaml is the resolved config and loads back to the same tree.
    saved = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert to_dict(saved)["model"] == to_dict(cfg)["model"]
    assert saved.data.train == str(photos["train"])

    # summary.json: both stages, exact step counts, model and bicubic numbers.
    on_disk = summary
    assert on_disk["run"] == {"name": "full", "run_dir": str(run_dir)}
    for stage, steps in (("srresnet", 6), ("srgan", 4)):
        entry = on_disk["stages"][stage]
        assert entry["completed"] and entry["steps"] == steps and entry["workers"] == 2
        assert entry["samples_per_s"] > 0 and entry["wall_time_s"] > 0
        assert 5 < entry["val_psnr_bicubic"] < 60 and 0 < entry["val_ssim_bicubic"] <= 1
        assert entry["val_psnr"] is not None and 0 < entry["val_ssim"] <= 1
        # Ray Train's checkpoints, one step-N folder each; each stage keeps its newest
        # num_to_keep (2), the last at the final step.
        checkpoints = sorted(p.name for p in (run_dir / f"full-{stage}").glob("step-*"))
        assert checkpoints == [f"step-{steps - 2:08d}", f"step-{steps:08d}"]

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

    # Running it again with --resume skips both finished stages (without Ray) and changes nothing.
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


def test_console_shows_progress_and_summary_and_the_log_file_has_the_rest(full_run):
    console = full_run["stdout"] + full_run["stderr"]
    for noise in RAY_NOISE:
        assert noise not in console, noise
    run_dir = full_run["run_dir"]
    lines = full_run["stdout"].splitlines()
    # Pre-flight, in order, naming the log file.
    assert lines[:4] == [
        "Data: 6 training image(s), 2 validation image(s)",
        f"Run directory: {run_dir}",
        f"TensorBoard:   tensorboard --logdir {run_dir}/tensorboard   (or: srgan-dist tensorboard {run_dir})",
        f"Log:           {run_dir}/train.log (Ray and every worker; -v prints it here too)",
    ]
    # Per stage: a header, progress lines (with the last validation against bicubic once there is
    # one), validation lines, the export; then the summary.
    for stage, steps in (("srresnet", 6), ("srgan", 4)):
        assert f"Stage {stage}: {steps} steps" in lines
        assert any(line.startswith(f"[{stage}] step {steps}/{steps} (100%)") for line in lines), stage
        assert any(line.startswith(f"[{stage}] validation at step 3: PSNR") for line in lines), stage
        assert f"Stage {stage}: done, exported {run_dir}/generator_{stage}.safetensors" in lines
    step_4 = next(line for line in lines if line.startswith("[srresnet] step 4/6"))
    assert re.search(r"\| ETA \S+ \| val PSNR [\d.]+ dB \(bicubic [\d.]+\)$", step_4), step_4
    assert "Validation PSNR / SSIM (Y channel, border = scale):" in lines
    assert re.search(r"^  srgan +model [\d.]+ dB", full_run["stdout"], re.MULTILINE)
    assert len(lines) < 50, full_run["stdout"]
    # The log file has what the console leaves out: Ray's driver log and every worker's output.
    log = (run_dir / "train.log").read_text()
    for line in (
        "Reporting training result",
        "Started a local Ray instance",
    ):
        assert line in log, line
    assert "(RayTrainWorker pid=" in log and "[srgan] step 4/4" in log


def test_one_worker_group_trains_both_stages_and_no_preemption_watcher_runs(full_run):
    """Ray's worker processes of the run: one group of 2 workers for both stages, and no
    PreemptionWatcher (an embedded Ray has no node to preempt; srgan_dist/embedded_ray.py)."""
    processes = full_run["ray_processes"]
    assert processes.count("RayTrainWorker") == 2 and processes.count("TrainController") == 1, processes
    assert "PreemptionWatcher" not in processes


def test_a_dying_worker_restarts_in_stage_2_then_a_failure_is_reported_first_and_a_rerun_resumes(
    ray_local, photos, tmp_path, capsys
):
    """One run's failures in order: a worker dies in stage 2 (the group restarts in stage 2 from
    its checkpoint, stage 1 is not trained again); after the one restart allowed, a worker raises
    (the console names it first); a rerun resumes stage 2 on fewer workers."""
    marker = tmp_path / "died-once"
    hooks = {
        "die": {"stage": "srgan", "step": 5, "rank": 1, "marker": str(marker)},
        "raise": {"stage": "srgan", "step": 7, "rank": 0},
    }
    stages = ("srresnet.iterations=2", "srgan.iterations=8", "srgan.checkpoint_interval=3")
    args = launch_args(tiny_overrides(photos, tmp_path, "rerun", "train.max_failures=1", *stages))
    with fault_plan(hooks):
        assert train_command.run(args) == 2  # the "driver" gives up: stage srgan unfinished
    assert marker.exists()  # the worker really died
    run_dir = tmp_path / "rerun"
    tensorboard = run_dir / "tensorboard"
    # Stage 1 was trained once: the restarted group skipped it (its generator and summary entry).
    assert steps_per_event_file(tensorboard / "srresnet", "loss/content") == [[1, 2]]
    attempts = steps_per_event_file(tensorboard / "srgan", "loss/total")
    assert attempts[0] == [1, 2, 3, 4]  # died during step 5, before logging it
    assert attempts[1] == [4, 5, 6]  # resumed from the step-3 checkpoint; raised during step 7
    # TensorBoard's purge makes the curve continuous: one value per step, no rewound stretch.
    assert [e.step for e in scalars(tensorboard / "srgan").Scalars("loss/total")] == [1, 2, 3, 4, 5, 6]
    captured = capsys.readouterr()
    # The console (quiet) says so and leaves Ray's restart chatter to the log file.
    assert "[srgan] resumed from checkpoint at step 3/8 on 2 worker(s)" in captured.out
    assert captured.out.count("Stage srresnet: done, exported") == 1
    assert not [noise for noise in RAY_NOISE if noise in captured.out]
    # The real error first (stage, worker rank, step, exception), then the full log.
    # (pre-flight warnings, such as the random VGG of this tiny config, may come before it)
    err = [line for line in captured.err.strip().splitlines() if not line.startswith("WARNING:")]
    assert err[0] == "error: stage srgan failed (train.max_failures=1 restart(s) allowed):", err
    assert "  worker rank 0: stage srgan, after step 7: RuntimeError: test hook: rank 0 raises" in "\n".join(
        err
    )
    assert err[-1] == f"Full log: {run_dir}/train.log"
    assert "Traceback" in (run_dir / "train.log").read_text()  # the worker's, in full
    assert json.loads((run_dir / "summary.json").read_text())["stages"].keys() == {"srresnet"}
    exported = (run_dir / "generator_srresnet.safetensors").stat().st_mtime

    # The rerun, verbose: Ray's worker output is printed as Ray prints it (and still logged).
    rerun_cfg = tiny_config(photos, tmp_path, "rerun", "scaling.num_workers=1", *stages)
    logged_before = len((run_dir / "train.log").read_text())
    summary = run_training(rerun_cfg, resume=True, verbose=True)
    assert (run_dir / "generator_srresnet.safetensors").stat().st_mtime == exported  # skipped
    assert summary["stages"]["srgan"]["steps"] == 8 and summary["stages"]["srgan"]["workers"] == 1
    assert steps_per_event_file(tensorboard / "srgan", "loss/total")[-1] == [7, 8]  # from step 6
    captured = capsys.readouterr()
    assert "Reporting training result" in captured.out + captured.err
    assert "Reporting training result" in (run_dir / "train.log").read_text()[logged_before:]


def test_nonfinite_loss_stops_the_stage_without_checkpointing_it(ray_local, photos, tmp_path):
    hooks = {"nan": {"stage": "srresnet", "step": 3}}
    cfg = tiny_config(photos, tmp_path, "nan", "train.stages=[srresnet]")
    with fault_plan(hooks), pytest.raises(RunError, match="non-finite loss at step 3"):
        run_training(cfg)
    run_dir = tmp_path / "nan"
    assert [p.name for p in (run_dir / "nan-srresnet").glob("step-*")] == ["step-00000002"]
    assert not (run_dir / "generator_srresnet.safetensors").exists()
