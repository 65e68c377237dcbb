"""The run's console and log file without Ray workers: routing of Ray's streamed worker output,
the driver's failure message, the progress line, and the driver resolving VGG weights once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from srgan_dist import driver, jobs
from srgan_dist.config import load_config
from srgan_dist.console import RunLog, say
from srgan_dist.monitor import Monitor
from srgan_dist.vgg_weights import VGGWeightsUnavailable

ROOT = Path(__file__).resolve().parents[1]


def worker_lines(lines: list[str], is_err: bool, actor: str = "RayTrainWorker", pid="4242") -> dict:
    """A record as Ray's log monitor hands it to the driver."""
    return {"lines": lines, "is_err": is_err, "pid": pid, "ip": "127.0.0.1", "actor_name": actor}


def test_quiet_run_log_prints_worker_stdout_and_files_everything(tmp_path, capsys):
    printed_by_ray = []
    with RunLog(tmp_path / "train.log", verbose=False) as run_log:
        say("Stage srresnet: 6 steps")
        logging.getLogger("srgan_dist.data.scan").info("data.train: probing 6 file(s)")
        run_log.worker_output(
            worker_lines(["[srresnet] step 1/6 (17%)"], is_err=False), printed_by_ray.append
        )
        noise = worker_lines(["Reporting training result 1: TrainingReport(...)"], is_err=True)
        run_log.worker_output(noise, printed_by_ray.append)
        raylet = {"lines": ["A worker died"], "is_err": True, "pid": "raylet", "ip": "127.0.0.1"}
        run_log.worker_output(raylet, printed_by_ray.append)
    out = capsys.readouterr().out
    assert out == "Stage srresnet: 6 steps\n[srresnet] step 1/6 (17%)\n"
    assert printed_by_ray == [raylet]  # the raylet's messages stay with Ray's printer
    log = (tmp_path / "train.log").read_text()
    assert "srgan_dist.console: Stage srresnet: 6 steps" in log
    assert "srgan_dist.data.scan: data.train: probing 6 file(s)" in log
    assert "(RayTrainWorker pid=4242 ip=127.0.0.1 stdout) [srresnet] step 1/6 (17%)" in log
    assert "(RayTrainWorker pid=4242 ip=127.0.0.1 stderr) Reporting training result 1" in log
    # Lines Ray delivers after the run still reach its log, never the console.
    run_log.worker_output(
        worker_lines(["Checkpoint successfully created"], is_err=True), printed_by_ray.append
    )
    assert "Checkpoint successfully created" in (tmp_path / "train.log").read_text()
    assert capsys.readouterr().out == ""


def test_verbose_run_log_leaves_printing_to_ray_and_takes_over_no_ray_handler(tmp_path):
    ray_logger = logging.getLogger("ray")
    console_handler = logging.StreamHandler()
    ray_logger.addHandler(console_handler)
    ray_logger.setLevel(logging.INFO)  # as `import ray` leaves it
    printed_by_ray = []
    try:
        with RunLog(tmp_path / "train.log", verbose=True) as run_log:
            run_log.capture_ray_logger()
            assert console_handler in ray_logger.handlers
            noise = worker_lines(["Reporting training result 1"], is_err=True)
            run_log.worker_output(noise, printed_by_ray.append)
        assert printed_by_ray == [noise]
        with RunLog(tmp_path / "quiet.log", verbose=False) as run_log:
            run_log.capture_ray_logger()
            assert console_handler not in ray_logger.handlers
            ray_logger.info("Started a local Ray instance.")
        assert console_handler in ray_logger.handlers  # given back
        assert "Started a local Ray instance." in (tmp_path / "quiet.log").read_text()
    finally:
        ray_logger.removeHandler(console_handler)


def test_the_driver_can_wait_for_a_worker_line_that_ray_streams_late(tmp_path):
    with RunLog(tmp_path / "train.log", verbose=False) as run_log:
        done = run_log.expect_worker_line("Stage srgan: done, exported")
        run_log.worker_output(worker_lines(["Stage srresnet: done, exported /r/g.safetensors"], False), print)
        assert not done.is_set()
        run_log.worker_output(worker_lines(["Stage srgan: done, exported /r/g.safetensors"], False), print)
        assert done.is_set()


def test_failure_names_the_worker_rank_step_and_exception():
    from ray.train import WorkerGroupError

    traceback_text = (
        'Traceback (most recent call last):\n  File "loop.py", line 60, in train_loop_per_worker\n'
        "RuntimeError: boom\n\nThe above exception was the direct cause of the following exception:\n\n"
        'Traceback (most recent call last):\n  File "loop.py", line 62\n'
        "srgan_dist.train.loop.WorkerFailed: stage srgan, after step 3: RuntimeError: boom\n"
    )
    error = WorkerGroupError(
        "...", {1: RuntimeError("The actor died unexpectedly\nmore"), 0: RuntimeError(traceback_text)}
    )
    assert driver.describe_failure(error) == (
        "  worker rank 0: stage srgan, after step 3: RuntimeError: boom\n"
        "  worker rank 1: The actor died unexpectedly"
    )


def test_progress_line_carries_the_last_validation_against_bicubic(tmp_path, capsys):
    monitor = Monitor(tmp_path / "tb", "srresnet", total_steps=10, start_step=0)
    try:
        monitor.progress(1, {"loss/content": 0.5, "perf/samples_per_s": 4.0})
        monitor.scalars(2, {"val/psnr": 27.125, "val/psnr_bicubic": 26.5})
        monitor.progress(3, {"loss/content": 0.25, "perf/samples_per_s": 4.0})
    finally:
        monitor.close()
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("[srresnet] step 1/10 (10%) content=0.5 | 4.0 samples/s | ETA ")
    assert "val PSNR" not in first
    assert second.endswith("| val PSNR 27.12 dB (bicubic 26.50)")


def test_driver_resolves_unavailable_imagenet_vgg_to_random_once(monkeypatch, caplog):
    def offline(weights, allow_random_fallback=False):
        raise VGGWeightsUnavailable("could not load torchvision VGG19 ImageNet weights (offline)")

    monkeypatch.setattr("srgan_dist.vgg_weights.load_vgg19_features", offline)
    demo = ROOT / "configs" / "demo.yaml"
    cfg = load_config(demo, ["loss.vgg_weights=imagenet", "loss.vgg_random_fallback=true"])
    with caplog.at_level(logging.WARNING, logger="srgan_dist.driver"):
        assert driver.check_vgg(cfg) == "random"  # what the workers get: no download per worker
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    with pytest.raises(VGGWeightsUnavailable):
        driver.check_vgg(load_config(demo, ["loss.vgg_weights=imagenet", "loss.vgg_random_fallback=false"]))
    assert driver.check_vgg(load_config(demo, ["train.stages=[srresnet]"])) == cfg.loss.vgg_weights


def test_submitted_training_job_passes_verbose_and_names_the_log_file():
    assert jobs.training_entrypoint(config="c.yaml", name="n", storage="/s", verbose=True).endswith(
        "--verbose"
    )
    assert "--verbose" not in jobs.training_entrypoint(config="c.yaml", name="n", storage="/s")
    assert jobs.run_log_location("s3://bucket/runs/demo/") == "s3://bucket/runs/demo/train.log"


def test_a_log_file_on_a_full_disk_is_said_once_without_tracebacks(capsys):
    """/dev/full fails every write with ENOSPC, as a full storage folder does."""
    with RunLog(Path("/dev/full"), verbose=False) as run_log:
        for line in range(5):
            say(f"line {line}")
        run_log.worker_output(worker_lines(["a worker line"], False), print)
    captured = capsys.readouterr()
    assert captured.err.count("cannot write the run's log (No space left on device)") == 1
    assert "Traceback" not in captured.err and "Logging error" not in captured.err
    assert "line 4" in captured.out and "a worker line" in captured.out  # the console goes on
