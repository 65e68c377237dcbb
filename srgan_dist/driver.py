"""The staged driver: one Ray Train run per stage, with an explicit weight hand-off between them.

``python launch.py --config configs/demo.yaml`` (or ``srgan-dist train``) ends up in
``run_training``, which

1. resolves and checks the config, the run directory and the data **before** asking Ray for
   anything (bad files, a taken run name or missing VGG weights stop it here);
2. connects to Ray: an embedded local instance bound to 127.0.0.1, or ``--address``;
3. for each stage not yet finished: ``TorchTrainer(train_loop_per_worker)`` with
   ``RunConfig(name=<name>-<stage>, storage_path=<storage>/<name>)``; Ray Train resumes a stage
   from its own latest checkpoint when the same run is started again;
4. exports ``generator_<stage>.safetensors`` from the stage's final checkpoint and passes that
   file to the next stage;
5. keeps ``summary.json`` up to date after each stage.

What it prints, and what goes to ``<run>/train.log`` instead, is ``srgan_dist/console.py``.

The run directory's layout is spelled in ``srgan_dist/rundir.py``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml

from srgan_dist.config import (
    Config,
    ConfigError,
    config_from_dict,
    frozen_changes,
    resolve_paths,
    to_dict,
    to_yaml,
)
from srgan_dist.console import RunLog, say
from srgan_dist.generator_io import GeneratorSpec, save_generator
from srgan_dist.rundir import RunDir, generator_file_name
from srgan_dist.storage import StorageError, is_folder, is_uri, local_copy

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """The run cannot go on as asked; the message says what to do."""


def run_dir_of(cfg: Config) -> RunDir:
    return RunDir.of(cfg.run.storage, cfg.run.name)


# ---------------------------------------------------------------------------------------------
# Pre-flight: everything that can fail without Ray.


def check_run_directory(cfg: Config, run_dir: RunDir, resume: bool) -> None:
    """A new run must not overwrite an old one; a resumed run must keep what is frozen on resume."""
    saved = run_dir.config_file
    if not saved.is_file():
        return
    if not resume:
        raise RunError(
            f"run directory {run_dir.root} already holds a run. Pass --resume to continue it, or choose "
            "another --name (nothing was changed)"
        )
    changes = frozen_changes(config_from_dict(yaml.safe_load(saved.read_text())), cfg)
    if changes:
        raise RunError(
            f"--resume: a resumed run must train the same model with the same losses, EMA and "
            f"schedules as {saved}; changed:\n  " + "\n  ".join(changes)
        )


def scan_data(cfg: Config, run_dir: RunDir) -> tuple[list[str], list[str]]:
    """Validate every training and validation image; return the usable (train, val) paths."""
    from srgan_dist.data import scan_images

    if not cfg.data.train:
        raise ConfigError(
            "data.train: not set; give a folder or list file, e.g. data.train=/data/DIV2K_train_HR"
        )
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir.scan_cache
    min_patch = max(cfg.stage(name).hr_patch_size for name in cfg.train.stages)
    train = scan_images(
        cfg.data.train, role="data.train", min_side=min_patch, data_cfg=cfg.data, cache_dir=cache_dir
    )
    val_files: list[str] = []
    if cfg.data.val:
        # SSIM's 11x11 window needs 11 px left after cropping `scale` px from each border.
        min_val = max(cfg.model.scale * 4, 11 + 2 * cfg.model.scale)
        val = scan_images(
            cfg.data.val, role="data.val", min_side=min_val, data_cfg=cfg.data, cache_dir=cache_dir
        )
        val_files = sorted(val.files)
        if cfg.data.val_max_images:
            val_files = val_files[: cfg.data.val_max_images]
        overlap = set(map(os.path.realpath, train.files)) & set(map(os.path.realpath, val_files))
        if overlap:
            raise ConfigError(
                f"data.val: {len(overlap)} validation image(s) are also training images, e.g. {sorted(overlap)[0]}"
            )
    else:
        log.warning("data.val is not set: no validation PSNR/SSIM, image grids or summary numbers")
    return list(train.files), val_files


def check_vgg(cfg: Config) -> str:
    """Load the VGG19 weights once here, so a missing file fails before any worker starts.

    Returns the ``loss.vgg_weights`` the workers get: ``"random"`` when ImageNet weights are
    unavailable and ``loss.vgg_random_fallback`` allows that (said once, here), so that no worker
    tries the download again; else the configured value.
    """
    if "srgan" not in cfg.train.stages:
        return cfg.loss.vgg_weights
    from srgan_dist.vgg_weights import VGGWeightsUnavailable, load_vgg19_features

    try:
        load_vgg19_features(cfg.loss.vgg_weights)
    except VGGWeightsUnavailable as error:
        if not cfg.loss.vgg_random_fallback:
            raise
        log.warning(
            "%s. FALLING BACK TO RANDOM VGG19 WEIGHTS on every worker (loss.vgg_random_fallback=true): "
            "the perceptual loss is not the paper's VGG54",
            error,
        )
        return "random"
    return cfg.loss.vgg_weights


# ---------------------------------------------------------------------------------------------
# Ray


def connect_ray(address: str | None, num_workers: int, cpus_per_worker: float) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``), else start an embedded Ray: 127.0.0.1 only, token auth on."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_address(address, "--address" if address != os.environ.get("RAY_ADDRESS") else "RAY_ADDRESS")
        ray.init(address=address, log_to_driver=True)
        say(f"Connected to Ray cluster at {address}")
        return
    # One CPU per worker plus one for Ray Train's controller; at least what the machine has.
    num_cpus = max(os.cpu_count() or 1, int(num_workers * cpus_per_worker) + 1)
    from srgan_dist.embedded_ray import init_embedded_ray

    init_embedded_ray(num_cpus, runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}})
    say(f"Started an embedded local Ray instance ({num_cpus} CPUs, 127.0.0.1)")


def check_ray_address(address: str, source: str) -> None:
    """Refuse, in one line and within seconds, an address training cannot join (pre-flight)."""
    from srgan_dist.jobs import gcs_unreachable

    if is_uri(address) and not address.startswith("ray://"):
        raise RunError(
            f"{source}={address} is a URL: that is the job server, which `srgan-dist submit` takes. "
            "Training joins a cluster by its GCS address (host:6379, or 'auto' inside a cluster job); "
            "unset RAY_ADDRESS to train on an embedded local Ray"
        )
    problem = gcs_unreachable(address)
    if problem:
        raise RunError(
            f"{source}={address}: no Ray cluster answers there ({problem}). Start one (ray start --head, "
            "cluster/local_cluster.sh up) or fix the address; nothing was started or written"
        )


def decide_gpu(cfg: Config) -> bool:
    """GPU or CPU workers, said in one line with the reason; with ``gpu``, wait for the GPUs."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    accelerator = cfg.scaling.accelerator
    use_gpu = accelerator == "gpu" or (accelerator == "auto" and gpus >= 1)
    workers = workers_setting(cfg)
    count = f"{workers[0]}-{workers[1]} (elastic)" if isinstance(workers, tuple) else str(workers)
    if use_gpu:
        why = "scaling.accelerator=gpu" if accelerator == "gpu" else f"auto: the cluster has {gpus} GPU(s)"
        say(f"Training on GPUs: {count} worker(s), 1 GPU each (NCCL) - {why}")
        needed = workers[0] if isinstance(workers, tuple) else workers
        wait_for_gpus(needed, cfg.scaling.cpus_per_worker, cfg.scaling.resource_timeout_s)
    else:
        why = (
            "scaling.accelerator=cpu"
            if accelerator == "cpu"
            else "auto: no GPUs in the Ray cluster now (on an autoscaling cluster whose GPU nodes "
            "start at 0, set scaling.accelerator=gpu)"
        )
        say(f"Training on CPUs: {count} worker(s), {cfg.scaling.cpus_per_worker:g} CPU each (gloo) - {why}")
    return use_gpu


def wait_for_gpus(needed: int, cpus_per_worker: float, timeout_s: float, poll_s: float = 2.0) -> None:
    """Ask the autoscaler for ``needed`` GPU workers and wait until the cluster has that many GPUs.

    ``request_resources`` is how Ray's autoscaler learns about demand before any task asks; the
    request is withdrawn once the GPUs are there (Ray Train's own placement group then holds them).
    Prints a waiting line every minute; raises ``RunError`` after ``timeout_s``, before anything
    is started, so nothing is lost.
    """
    import ray
    from ray.autoscaler.sdk import request_resources

    def gpus_now() -> int:
        return int(ray.cluster_resources().get("GPU", 0))

    if gpus_now() >= needed:
        return
    request_resources(bundles=[{"GPU": 1, "CPU": cpus_per_worker}] * needed)
    started, last_said = time.monotonic(), None
    try:
        while (have := gpus_now()) < needed:
            waited = time.monotonic() - started
            if waited >= timeout_s:
                raise RunError(
                    f"gave up after {waited:.0f} s waiting for {needed} GPU worker(s): the cluster has {have} "
                    "GPU(s). Check the autoscaler (ray status, the GPU node type's max_workers and quota), "
                    "raise scaling.resource_timeout_s, or use fewer --workers. Nothing was started."
                )
            if last_said is None or time.monotonic() - last_said >= 60:
                say(
                    f"waiting for {needed} GPU worker(s) (cluster has {have} GPU(s); the autoscaler may be "
                    f"adding nodes)... {waited:.0f} s of {timeout_s:.0f} s"
                )
                last_said = time.monotonic()
            time.sleep(poll_s)
    finally:
        request_resources(bundles=[])
    say(f"{needed} GPU(s) available after {time.monotonic() - started:.0f} s")


def workers_setting(cfg: Config) -> int | tuple[int, int]:
    """Ray Train's ``num_workers``: a count, or ``(min, max)`` for an elastic run."""
    if cfg.scaling.min_workers:
        return (cfg.scaling.min_workers, cfg.scaling.num_workers)
    return cfg.scaling.num_workers


def set_aside_stale_ray_snapshot(stage: str, run_dir: RunDir) -> None:
    """Let a stage resume when Ray's run snapshot lists checkpoints that are gone or damaged.

    Ray Train keeps the checkpoints it registered in ``<stage_dir>/checkpoint_manager_snapshot.json``
    and refuses to start a run whose snapshot lists a folder that is gone, or that it cannot parse
    (``CheckpointManager._maybe_load_state_from_storage`` / ``_assert_checkpoints_exist``). Workers
    choose their checkpoint from the folders on disk (``StageTrainer.resume``), so that list only
    decides what Ray prunes (``num_to_keep``) and hands back as ``Result.checkpoint``. A stale one
    is renamed ``*.stale`` and Ray starts with an empty list; no checkpoint folder is touched (the
    older ones are then never pruned). A damaged one is set aside too: otherwise Ray would later
    prune it by path, deleting the good checkpoint re-written under the same name. In cloud
    storage the same checks run on the URI (each listed checkpoint is downloaded to verify it).
    """
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    from srgan_dist.train import checkpoint as ckpt

    stage_dir = run_dir.checkpoints(stage)
    path = stage_dir / CHECKPOINT_MANAGER_SNAPSHOT_FILENAME
    if not run_dir.pull(path):
        return
    problem, damaged = "", ""
    try:
        snapshot = json.loads(path.read_text())
        listed = [entry["checkpoint_dir_name"] for entry in snapshot["checkpoint_results"]]
        if snapshot.get("latest_checkpoint_result"):
            listed.append(snapshot["latest_checkpoint_result"]["checkpoint_dir_name"])
    except (ValueError, KeyError, TypeError) as error:  # half-written (Ray does not write it atomically)
        problem = f"Ray's run snapshot is unreadable ({error!r})"
    else:
        gone = sorted({name for name in listed if not is_folder(run_dir.location_of(stage_dir / name))})
        if gone:
            problem = f"checkpoint folder(s) {', '.join(gone)} are gone"
        for name in sorted(set(listed) - set(gone)):
            try:
                with local_copy(run_dir.location_of(stage_dir / name)) as directory:
                    ckpt.verify_checkpoint(directory)
            except ckpt.CheckpointError:
                damaged = name  # the worker names it when it skips it
    if not problem and not damaged:
        return
    aside = path.with_name(path.name + ".stale")
    run_dir.rename(path, aside)
    if problem:
        say(f"Stage {stage}: {problem}; resuming from the newest good checkpoint left ({aside} kept)")
    else:
        log.info(
            "stage %s: Ray's run snapshot lists damaged checkpoint %s; kept as %s", stage, damaged, aside
        )


def route_ray_output(run_log: RunLog) -> None:
    """Hand the output Ray streams from workers and actors to ``run_log`` (see console.py).

    Ray's only public switch is ``ray.init(log_to_driver=...)``; where the lines go is decided by
    its worker-stream dispatcher, the hook the Ray Client log servicer also uses. The router
    stays after the run (late lines still reach its log file) until the next run replaces it.
    """
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    name = "ray_print_logs"  # what ray.init registers its printer as (ray/_private/worker.py)
    printers = [handler for key, handler in dispatcher.handlers if key == name]
    if not printers:  # log_to_driver=False: no worker output comes to this process
        return
    ray_printer = getattr(printers[0], "ray_printer", printers[0])  # unwrap an earlier run's router

    def router(data: dict[str, Any]) -> None:
        run_log.worker_output(data, ray_printer)

    router.ray_printer = ray_printer
    dispatcher.remove_handler(name)
    dispatcher.add_handler(name, router)


def describe_failure(error: Exception) -> str:
    """Ray Train's failure as a few lines: per failed worker rank, its exception's last line."""
    from ray.train import WorkerGroupError

    from srgan_dist.train.loop import WorkerFailed

    def last_line(text: str) -> str:
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        if not lines:
            return "(no message)"
        # A worker's own exception arrives as its traceback text; Ray's errors start with the
        # point, and one ending in ':' has the cause on the next line (a controller error's).
        if "Traceback (most recent call last)" in text:
            line = lines[-1]
        else:
            line = " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]
        return line.removeprefix(f"{WorkerFailed.__module__}.{WorkerFailed.__name__}: ")

    if isinstance(error, WorkerGroupError) and error.worker_failures:
        return "\n".join(
            f"  worker rank {rank}: {last_line(str(failure))}"
            for rank, failure in sorted(error.worker_failures.items())
        )
    return "  " + last_line(str(error))


def run_stage(
    cfg: Config,
    stage: str,
    run_dir: RunDir,
    train_files: list[str],
    val_files: list[str],
    init_generator: Path | None,
    use_gpu: bool,
    test_hooks: dict[str, Any] | None = None,
) -> Any:
    """One Ray Train run for ``stage``; returns Ray's ``Result``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    from srgan_dist.train.loop import train_loop_per_worker

    stage_cfg = cfg.stage(stage)
    loop_config = {
        "config": to_dict(cfg),
        "stage": stage,
        "run_dir": run_dir.location,
        "train_files": train_files,
        "val_files": val_files,
        "init_generator": str(run_dir.location_of(init_generator)) if init_generator else None,
        "test_hooks": test_hooks,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=workers_setting(cfg),
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
            placement_strategy=cfg.scaling.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_dir.ray_run_name(stage),
            storage_path=run_dir.location,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=stage_cfg.num_to_keep),
        ),
    )
    set_aside_stale_ray_snapshot(stage, run_dir)
    error_file = run_dir.stage_error(stage)
    run_dir.remove(error_file)
    try:
        result = trainer.fit()
    except TrainingFailedError as error:
        log.info("stage %s: Ray Train's error in full", stage, exc_info=True)  # the log file's copy
        raise RunError(
            f"stage {stage} failed (train.max_failures={cfg.train.max_failures} restart(s) allowed):\n"
            + describe_failure(error)
        ) from error
    if run_dir.pull(error_file):  # see train/loop.py: errors a restart cannot fix end the attempt
        error = json.loads(error_file.read_text())
        raise RunError(f"stage {stage} cannot start: {error['message']} (not retried: it would fail again)")
    return result


# ---------------------------------------------------------------------------------------------
# Stage results


def load_summary(run_dir: RunDir) -> dict[str, Any]:
    path = run_dir.summary_file
    return json.loads(path.read_text()) if path.is_file() else {"stages": {}}


def write_summary(run_dir: RunDir, summary: dict[str, Any]) -> None:
    tmp = run_dir.summary_file.with_name(run_dir.summary_file.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(run_dir.summary_file)
    run_dir.push(run_dir.summary_file)


def export_stage_generator(
    cfg: Config, stage: str, result: Any, run_dir: RunDir
) -> tuple[Path, dict[str, Any]]:
    """Write ``generator_<stage>.safetensors`` (the EMA when kept) from the stage's final checkpoint."""
    from srgan_dist.train import checkpoint as ckpt
    from srgan_dist.train.trainer import generator_weights_to_export

    if result.checkpoint is None:
        raise RunError(f"stage {stage} finished without a checkpoint; see the log above")
    with result.checkpoint.as_directory() as directory:
        try:
            state = ckpt.load_checkpoint(Path(directory), stage)
        except ckpt.CheckpointError as error:
            raise RunError(f"stage {stage}: its final checkpoint is unusable: {error}") from error
    spec = GeneratorSpec.from_model_config(cfg.model, stage=stage, step=int(state["step"]))
    generator = spec.build()
    generator.load_state_dict(generator_weights_to_export(state))
    path = save_generator(generator, spec, run_dir.generator(stage))
    run_dir.push_generator(stage)
    return path, dict(result.metrics or {})


def stage_summary(cfg: Config, stage: str, metrics: dict[str, Any], wall_time_s: float) -> dict[str, Any]:
    return {
        "completed": True,
        "steps": int(metrics.get("step", cfg.stage(stage).iterations)),
        "wall_time_s": round(wall_time_s, 2),
        "train_time_s": round(float(metrics.get("train_time_s", 0.0)), 2),
        "samples_per_s": round(float(metrics.get("samples_per_s", 0.0)), 2),
        "workers": int(metrics.get("world_size", cfg.scaling.num_workers)),
        "val_psnr": metrics.get("val/psnr"),
        "val_ssim": metrics.get("val/ssim"),
        "val_psnr_bicubic": metrics.get("val/psnr_bicubic"),
        **({"val_psnr_raw": metrics["val/psnr_raw"]} if "val/psnr_raw" in metrics else {}),
        "val_ssim_bicubic": metrics.get("val/ssim_bicubic"),
        "generator": generator_file_name(stage),
    }


# ---------------------------------------------------------------------------------------------
# The whole run


def run_training(
    cfg: Config,
    *,
    resume: bool = False,
    address: str | None = None,
    verbose: bool = False,
    test_hooks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train every stage of ``cfg`` not finished yet; return ``summary.json``'s content.

    The console gets the lines of ``srgan_dist/console.py``; Ray's logs and the workers' full
    output go to ``<run>/train.log`` (to both with ``verbose``).
    """
    cfg = resolve_paths(cfg)
    run_dir = run_dir_of(cfg)
    run_dir.check_location()
    run_dir.pull_run_files()
    check_run_directory(cfg, run_dir, resume)
    train_files, val_files = scan_data(cfg, run_dir)
    workers_cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, vgg_weights=check_vgg(cfg)))

    run_dir.root.mkdir(parents=True, exist_ok=True)  # for train.log; config.yaml comes once Ray is up
    try:
        with RunLog(run_dir.log_file, verbose) as run_log:
            say(f"Data: {len(train_files)} training image(s), {len(val_files)} validation image(s)")
            say(f"Run directory: {run_dir.location}")
            if run_dir.uri:
                say(f"TensorBoard:   srgan-dist tensorboard {run_dir.uri}   (events upload at each log step)")
            else:
                say(
                    f"TensorBoard:   tensorboard --logdir {run_dir.tensorboard_root}   "
                    f"(or: srgan-dist tensorboard {run_dir.root})"
                )
            if not verbose:
                say(f"Log:           {run_dir.log_file} (Ray and every worker; -v prints it here too)")
            summary = _train_stages(
                cfg, workers_cfg, run_dir, run_log, train_files, val_files, address, test_hooks
            )
            print_summary(summary)
    finally:
        upload_log(run_dir)
    return summary


def upload_log(run_dir: RunDir) -> None:
    """Upload ``train.log`` to a run in cloud storage; if that fails too (the storage is what
    failed), say so without hiding the error that ended the run."""
    try:
        run_dir.push(run_dir.log_file)
    except StorageError as error:
        say(f"train.log stays at {run_dir.log_file}: {error}")


def _train_stages(
    cfg: Config,
    workers_cfg: Config,
    run_dir: RunDir,
    run_log: RunLog,
    train_files: list[str],
    val_files: list[str],
    address: str | None,
    test_hooks: dict[str, Any] | None,
) -> dict[str, Any]:
    summary = load_summary(run_dir)
    summary["run"] = {"name": cfg.run.name, "run_dir": run_dir.location}

    def finished(stage: str) -> bool:
        return bool(summary["stages"].get(stage, {}).get("completed")) and run_dir.generator(stage).is_file()

    if all(finished(stage) for stage in cfg.train.stages):  # nothing left: no Ray needed
        for stage in cfg.train.stages:
            say(f"Stage {stage}: already finished, skipping ({run_dir.generator(stage).name})")
        return summary
    import ray  # noqa: F401 - gives Ray's driver logger its handlers, which run_log then takes over

    run_log.capture_ray_logger()
    connect_ray(address, cfg.scaling.num_workers, cfg.scaling.cpus_per_worker)
    route_ray_output(run_log)
    use_gpu = decide_gpu(cfg)
    # The run starts here: config.yaml marks the folder as holding a run (a new run with this
    # name then needs --resume), so a failure in pre-flight or while connecting must not write it.
    run_dir.config_file.write_text(to_yaml(cfg))
    run_dir.push(run_dir.config_file)
    previous_generator: Path | None = None
    for stage in cfg.train.stages:
        if finished(stage):
            say(f"Stage {stage}: already finished, skipping ({run_dir.generator(stage).name})")
            previous_generator = run_dir.generator(stage)
            continue
        say(f"Stage {stage}: {cfg.stage(stage).iterations} steps")
        nonfinite = run_dir.nonfinite_marker(stage)
        run_dir.remove(nonfinite)
        started = time.perf_counter()
        result = run_stage(
            workers_cfg, stage, run_dir, train_files, val_files, previous_generator, use_gpu, test_hooks
        )
        if run_dir.pull(nonfinite):
            info = json.loads(nonfinite.read_text())
            raise RunError(
                f"stage {stage}: non-finite loss at step {info['step']} ({info['skipped_steps']} step(s) "
                f"skipped in this stage); stopped without saving that state. The last checkpoint (step "
                f"{info['last_checkpoint_step']}) is kept. Lower {stage}.lr, or set "
                "train.on_nonfinite=skip, then run again with --resume"
            )
        previous_generator, metrics = export_stage_generator(cfg, stage, result, run_dir)
        summary["stages"][stage] = stage_summary(cfg, stage, metrics, time.perf_counter() - started)
        write_summary(run_dir, summary)
        say(f"Stage {stage}: done, exported {previous_generator}")
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    say("\nValidation PSNR / SSIM (Y channel, border = scale):")
    for stage, entry in summary["stages"].items():
        if entry.get("val_psnr") is None:
            say(f"  {stage:9s} no validation set")
            continue
        gain = entry["val_psnr"] - entry["val_psnr_bicubic"]
        say(
            f"  {stage:9s} model {entry['val_psnr']:.2f} dB / {entry['val_ssim']:.4f}   bicubic "
            f"{entry['val_psnr_bicubic']:.2f} dB / {entry['val_ssim_bicubic']:.4f}   gain {gain:+.2f} dB   "
            f"({entry['steps']} steps, {entry['samples_per_s']:.1f} samples/s)"
        )
