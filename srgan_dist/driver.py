"""The staged driver: pre-flight, Ray, then one Ray Train run that trains every stage.

``python launch.py --config configs/demo.yaml`` (or ``srgan-dist train``) ends up in
``run_training``, which

1. resolves and checks the config, the run directory and the data **before** asking Ray for
   anything (bad files, a taken run name or missing VGG weights stop it here);
2. connects to Ray: an embedded local instance bound to 127.0.0.1, or ``--address``;
3. starts one ``TorchTrainer(train_loop_per_worker)`` with ``RunConfig(name=<name>,
   storage_path=<storage>)`` (:func:`fit_stages`). Its worker group trains the stages not yet
   finished in order; after each stage rank 0 exports ``generator_<stage>.safetensors``, which
   the next stage starts from (explicit hand-off), and adds the stage to ``summary.json``
   (``srgan_dist/train/loop.py``). Started again, a run resumes the stage it was in from that
   stage's newest good checkpoint;
4. turns what the workers left (``summary.json``, ``<stage>/error.json``,
   ``<stage>/nonfinite.json``) or Ray's failure into the console's last lines.

What it prints, and what goes to ``<run>/train.log`` instead, is ``srgan_dist/console.py``.

The run directory's layout is spelled in ``srgan_dist/rundir.py``.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from srgan_dist import atomic
from srgan_dist.config import (
    Config,
    ConfigError,
    frozen_changes,
    load_saved_config,
    resolve_paths,
    to_dict,
    to_yaml,
)
from srgan_dist.console import RunLog, say
from srgan_dist.data.scan import ConvertedCopies
from srgan_dist.errors import UserError
from srgan_dist.ray_session import (
    StartBound,
    connect_ray,
    decide_gpu,
    embedded_capacity_problem,
    fewest_workers,
    scaling_config,
    start_timed_out,
    training_address_problem,
)
from srgan_dist.run_lock import RunLock
from srgan_dist.run_record import (
    NonFiniteStop,
    StageStartError,
    Summary,
    clear_stops,
    done_line_prefix,
    first_unfinished_stage,
    print_summary,
    read_stop,
    read_summary,
    unfinished_stages,
)
from srgan_dist.rundir import RunDir
from srgan_dist.stages import needs_vgg
from srgan_dist.storage import StorageError, file_info, is_uri

log = logging.getLogger(__name__)


class RunError(UserError):
    """The run cannot go on as asked; the message says what to do."""


def run_dir_of(cfg: Config) -> RunDir:
    return RunDir.of(cfg.run.storage, cfg.run.name)


# ---------------------------------------------------------------------------------------------
# Pre-flight: everything that can fail without Ray.


def saved_run_config(run_dir: RunDir, resume: bool) -> Config | None:
    """The config of the run ``run_dir`` already holds (None: none yet); a new run must not
    overwrite an old one."""
    saved = run_dir.config_file
    if not saved.is_file():
        return None
    if not resume:
        raise RunError(
            f"run directory {run_dir.root} already holds a run. Pass --resume to continue it, or choose "
            "another --name (nothing was changed)"
        )
    return load_saved_config(saved)


def check_resume(saved: Config | None, cfg: Config, run_dir: RunDir) -> None:
    """A resumed run must keep what is frozen on resume, compared as the workers would train it
    (:func:`run_config`): a run that fell back to random VGG weights and falls back again goes
    on, and one whose ImageNet weights would load now is told how to continue as it began."""
    if saved is None:
        return
    changes = frozen_changes(saved, cfg)
    if not changes:
        return
    hint = ""
    if saved.loss.vgg_weights == "random" != cfg.loss.vgg_weights:
        hint = (
            "\n  (the run trained with random VGG19 weights; pass loss.vgg_weights=random to continue "
            "it as it began, or start a new run for the ImageNet VGG)"
        )
    elif cfg.loss.vgg_weights == "random" != saved.loss.vgg_weights:
        hint = (
            f"\n  (this machine cannot load the VGG19 weights the run names, {saved.loss.vgg_weights}, and "
            "would fall back to random ones: put them in the torch hub cache or pass "
            "loss.vgg_weights=PATH to the same weights)"
        )
    raise RunError(
        f"--resume: a resumed run must train the same model with the same losses, EMA and "
        f"schedules as {run_dir.config_file}; changed:\n  " + "\n  ".join(changes) + hint
    )


def scan_data(cfg: Config, run_dir: RunDir) -> tuple[list[str], list[str]]:
    """Validate every training and validation image; return the usable (train, val) paths or URIs.

    The scan cache lives next to the run (``.scan_cache/``): for a run in object storage it is
    fetched from there first and uploaded after, so a restart or ``--resume`` on any machine
    probes only new or changed files; converted copies are uploaded there for the workers."""
    from srgan_dist.data import scan_images
    from srgan_dist.data.scan import cache_file_name
    from srgan_dist.data.scoring import min_scoring_side

    if not cfg.data.train:
        raise ConfigError(
            "data.train: not set; give a folder or list file, e.g. data.train=/data/DIV2K_train_HR"
        )
    cache_dir = run_dir.scan_cache
    sources = [cfg.data.train] + ([cfg.data.val] if cfg.data.val else [])
    for source in sources:
        run_dir.pull(cache_dir / cache_file_name(source))

    def scan(source: str, role: str, min_side: int):
        result = scan_images(
            source,
            role=role,
            min_side=min_side,
            data_cfg=cfg.data,
            cache_dir=cache_dir,
            copies=RunCopies(run_dir),
        )
        run_dir.push(cache_dir / cache_file_name(source))
        return result

    min_patch = max(cfg.stage(name).hr_patch_size for name in cfg.train.stages)
    train = scan(cfg.data.train, "data.train", min_patch)
    val_files: list[str] = []
    if cfg.data.val:
        val = scan(cfg.data.val, "data.val", min_scoring_side(cfg.model.scale))
        val_files = sorted(val.files)
        if cfg.data.val_max_images:
            val_files = val_files[: cfg.data.val_max_images]
        overlap = set(map(_same_file, train.files)) & set(map(_same_file, val_files))
        if overlap:
            raise ConfigError(
                f"data.val: {len(overlap)} validation image(s) are also training images, e.g. {sorted(overlap)[0]}"
            )
    else:
        log.warning("data.val is not set: no validation PSNR/SSIM, image grids or summary numbers")
    return list(train.files), val_files


class RunCopies(ConvertedCopies):
    """Converted copies kept in the run directory, uploaded there for a run in object storage."""

    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir

    def has(self, path: Path) -> bool:
        return path.is_file() or (
            self.run_dir.uri is not None and bool(file_info(str(self.run_dir.location_of(path))))
        )

    def keep(self, path: Path) -> None:
        self.run_dir.push(path)

    def location(self, path: Path) -> str:
        return str(self.run_dir.location_of(path))


def _same_file(location: str) -> str:
    """What identifies a training or validation image: its real path, or its URI."""
    return location.partition("?")[0] if is_uri(location) else os.path.realpath(location)


def check_vgg(cfg: Config) -> str:
    """Load the VGG19 weights once here, so a missing file fails before any worker starts.

    Returns the ``loss.vgg_weights`` the workers get: ``"random"`` when ImageNet weights are
    unavailable and ``loss.vgg_random_fallback`` allows that (said once, here), so that no worker
    tries the download again; else the configured value.
    """
    if not needs_vgg(cfg.train.stages):
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


def run_config(cfg: Config) -> Config:
    """The run's one config: ``cfg`` with the VGG weights the workers really use
    (:func:`check_vgg`). ``config.yaml``, every worker and every checkpoint get this one, so
    the run directory says which perceptual loss trained it."""
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, vgg_weights=check_vgg(cfg)))


# ---------------------------------------------------------------------------------------------
# Ray


def check_ray_address(address: str | None) -> None:
    """Refuse, in one line and within seconds, an address training cannot join (pre-flight;
    ``ray_session.training_address_problem`` says which problems)."""
    problem = training_address_problem(address)
    if problem:
        raise RunError(f"{problem}; no run was started")


def forget_ray_checkpoint_list(run_dir: RunDir) -> None:
    """Remove Ray Train's list of reported checkpoints before a run starts (see ``fit_stages``).

    Ray Train keeps the checkpoints it registered in ``<run>/checkpoint_manager_snapshot.json``
    and refuses to start a run whose list names a folder that is gone
    (``CheckpointManager._assert_checkpoints_exist``). Each stage prunes its own folder, so that
    list always names deleted folders after a while; and nothing here reads it: workers choose
    their checkpoint from the folders on disk (``StageTrainer.resume``) and export the generator
    themselves. No checkpoint folder is touched.
    """
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    run_dir.remove(run_dir.root / CHECKPOINT_MANAGER_SNAPSHOT_FILENAME)


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


def fit_stages(
    cfg: Config,
    run_dir: RunDir,
    train_files: list[str],
    val_files: list[str],
    use_gpu: bool,
) -> None:
    """One Ray Train run, one worker group, for every stage not finished (``train/loop.py``).

    Where checkpoints go: Ray Train persists a reported checkpoint to
    ``<storage_path>/<RunConfig.name>/<checkpoint_dir_name>`` (``StorageContext``:
    ``experiment_fs_path`` joined with the name, folders created as needed). With
    ``storage_path=<storage>`` and ``name=<run name>`` Ray's run folder is the run directory
    itself, and workers name each checkpoint ``<name>-<stage>/step-NNNNNNNN``, so every stage
    keeps its own folder.

    Retention: Ray's ``CheckpointManager`` has one ``num_to_keep`` per run and deletes the
    oldest registered checkpoints across everything the run reported, so stage 2 would delete
    stage 1's. Its pruning is therefore off (``num_to_keep=None``: Ray deletes nothing) and rank 0
    prunes the stage's folder to ``<stage>.num_to_keep`` after each checkpoint
    (``checkpoint.prune_checkpoints``). Ray's list then names deleted folders, which would stop a
    later ``--resume``: :func:`forget_ray_checkpoint_list`.

    Each start of the worker group (the first, and each restart) of a fixed-size run waits at
    most ``scaling.resource_timeout_s`` for its resources to come free
    (``ray_session.StartBound``); then the run stops with one line.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    from srgan_dist.train.loop import train_loop_per_worker

    start_bound = StartBound.of(cfg.scaling)
    loop_config = {
        "config": to_dict(cfg),
        "run_dir": run_dir.location,
        "train_files": train_files,
        "val_files": val_files,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg.scaling, use_gpu),
        run_config=RunConfig(
            name=run_dir.name,
            storage_path=run_dir.storage_location,
            failure_config=FailureConfig(
                max_failures=cfg.train.max_failures,
                max_preemption_failures=cfg.train.max_preemption_failures,
                controller_failure_limit=start_bound.controller_failure_limit,
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    forget_ray_checkpoint_list(run_dir)
    try:
        with start_bound.applied():
            fit_interruptibly(trainer)
    except TrainingFailedError as error:
        log.info("Ray Train's error in full", exc_info=True)  # the log file's copy
        stage = failed_stage(cfg, run_dir)
        if start_timed_out(error):
            scaling = cfg.scaling
            each = f"{scaling.cpus_per_worker:g} CPU" + (" + 1 GPU" if use_gpu else "")
            raise RunError(
                f"gave up after scaling.resource_timeout_s={scaling.resource_timeout_s:g} s: Ray Train "
                f"could not place {fewest_workers(scaling)} worker(s) of {each} for stage {stage} (the "
                "cluster has them, but not free: other jobs or actors hold them, or a node left). Check "
                f"`ray status`, raise scaling.resource_timeout_s or use fewer --workers, then run the "
                f"same command with --resume ({resume_point(run_dir, stage)})"
            ) from error
        failures = describe_failure(error)
        full = storage_full(failures)
        if full:
            raise RunError(
                f"storage full while training stage {stage} ({full}); nothing older was touched: "
                f"{resume_point(run_dir, stage)} (--resume skips it if the full disk cut it short). "
                "Free space, then run the same command with --resume"
            ) from error
        raise RunError(
            f"stage {stage} failed (train.max_failures={cfg.train.max_failures} restart(s) allowed):\n"
            + failures
        ) from error


def storage_full(failures: str) -> str | None:
    """The first worker failure (``describe_failure``'s lines) that is a full disk, if any: a
    restart cannot fix it, and the user needs one line, not every rank's."""
    return next((line.strip() for line in failures.splitlines() if os.strerror(errno.ENOSPC) in line), None)


def failed_stage(cfg: Config, run_dir: RunDir) -> str | None:
    """The stage a failed run stopped in, as the record in the run's storage says. When that
    storage cannot be read (often it is what failed, and Ray's error says so), this machine's
    working copy answers: right whenever rank 0 shared this machine."""
    try:
        return first_unfinished_stage(run_dir, cfg.train.stages)
    except StorageError as error:
        log.info("which stage failed, from this machine's copy of the run: %s", error)
        return first_unfinished_stage(RunDir(run_dir.root), cfg.train.stages)


def check_stages_finished(cfg: Config, run_dir: RunDir) -> None:
    """After the Ray Train run: raise ``RunError`` saying why a stage stopped, if one did."""
    stage = first_unfinished_stage(run_dir, cfg.train.stages)
    if stage is None:
        return
    # See train/loop.py: errors a restart cannot fix end the attempt.
    if error := read_stop(run_dir, stage, StageStartError):
        raise RunError(f"stage {stage} cannot start: {error.message} (not retried: it would fail again)")
    if stop := read_stop(run_dir, stage, NonFiniteStop):
        raise RunError(
            f"stage {stage}: non-finite loss at step {stop.step} ({stop.skipped_steps} step(s) "
            f"skipped in this stage); stopped without saving that state. The last checkpoint (step "
            f"{stop.last_checkpoint_step}) is kept. Lower {stage}.lr, or set "
            "train.on_nonfinite=skip, then run again with --resume"
        )
    raise RunError(f"stage {stage} ended without finishing; see {run_dir.log_file}")


# ---------------------------------------------------------------------------------------------
# Stopping: Ctrl-C and SIGTERM end the run within seconds, with one line


class RunStopped(UserError):
    """The user stopped the run (Ctrl-C, SIGTERM); the message says where it can resume."""

    def __init__(self, message: str, signum: int | None) -> None:
        super().__init__(message)
        self.exit_code = 128 + (signum or signal.SIGINT)


class StopSignals:
    """While active, SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main thread, wherever
    the driver is (pre-flight, joining Ray, waiting on Ray Train), and the previous handlers come
    back after. ``received`` is the last signal's number."""

    received: int | None = None

    @classmethod
    def _handler(cls, signum: int, frame: object) -> None:
        cls.received = signum
        raise KeyboardInterrupt

    @classmethod
    def install(cls) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, cls._handler)

    def __enter__(self) -> StopSignals:
        StopSignals.received = None
        self.previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)


def fit_interruptibly(trainer: Any) -> None:
    """``trainer.fit()`` in a helper thread while this thread waits, so a stop signal reaches the
    driver as ``KeyboardInterrupt`` (in the main thread Ray Train would take SIGINT itself, abort
    the run and return as if it had ended). On a stop, Ray is shut down: the run's workers and
    controller end with the driver's connection; checkpoints already written stay."""
    import ray

    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as error:  # handed to the main thread below
            outcome["error"] = error

    thread = threading.Thread(target=fit, name="srgan-dist-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(timeout=0.5)
    except KeyboardInterrupt:
        ray.shutdown()
        raise
    if "error" in outcome:
        raise outcome["error"]


def stopped_message(cfg: Config, run_dir: RunDir) -> str:
    """Where a stopped run can go on from: the stage it was in and that stage's newest checkpoint."""
    if not run_dir.config_file.is_file():
        return "stopped before training started; nothing of the run was written"
    try:
        stage = failed_stage(cfg, run_dir)
        where = resume_point(run_dir, stage)
    except OSError as error:  # StorageError included
        return f"stopped; could not read the run's record ({error}); run the same command with --resume"
    if stage is None:
        return "stopped after the last stage had finished; nothing is left to train"
    return f"stopped during stage {stage}; {where}; run the same command with --resume to continue"


def resume_point(run_dir: RunDir, stage: str | None) -> str:
    """Where ``--resume`` continues ``stage`` from: its newest checkpoint folder, by name."""
    from srgan_dist.train.checkpoint import list_checkpoints

    newest = list_checkpoints(run_dir.location_of(run_dir.checkpoints(stage))) if stage else []
    if not newest:
        return "it has no checkpoint yet (it restarts from its start)"
    return f"its newest checkpoint is step {int(newest[0].removeprefix('step-'))}"


# ---------------------------------------------------------------------------------------------
# The whole run


def run_training(
    cfg: Config,
    *,
    resume: bool = False,
    address: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Train every stage of ``cfg`` not finished yet; return ``summary.json``'s content.

    The console gets the lines of ``srgan_dist/console.py``; Ray's logs and the workers' full
    output go to ``<run>/train.log`` (to both with ``verbose``).
    """
    cfg = resolve_paths(cfg)
    run_dir = run_dir_of(cfg)
    run_dir.check_location()
    capacity = embedded_capacity_problem(cfg.scaling, address)
    if capacity:
        raise RunError(f"{capacity}; no run was started")
    try:
        # One driver per run: the lock comes before anything of the run is read or written.
        with RunLock(run_dir), StopSignals():
            return _preflight_and_train(cfg, run_dir, resume, address, verbose)
    except KeyboardInterrupt:
        raise RunStopped(stopped_message(cfg, run_dir), StopSignals.received) from None


def _preflight_and_train(
    cfg: Config, run_dir: RunDir, resume: bool, address: str | None, verbose: bool
) -> dict[str, Any]:
    run_dir.pull_run_files()
    saved = saved_run_config(run_dir, resume)
    train_files, val_files = scan_data(cfg, run_dir)
    cfg = run_config(cfg)
    check_resume(saved, cfg, run_dir)
    check_ray_address(address)

    run_dir.root.mkdir(parents=True, exist_ok=True)  # for train.log; config.yaml comes once Ray is up
    try:
        with RunLog(run_dir.log_file, verbose) as run_log:
            say(f"Data: {len(train_files)} training image(s), {len(val_files)} validation image(s)")
            say(f"Run directory: {run_dir.location}")
            if run_dir.uri:
                say(
                    f"TensorBoard:   srgan-dist tensorboard {run_dir.uri}   (live; events upload every "
                    f"{cfg.monitor.upload_interval_s:g}s and at each validation and checkpoint)"
                )
            else:
                say(
                    f"TensorBoard:   tensorboard --logdir {run_dir.tensorboard_root}   "
                    f"(or: srgan-dist tensorboard {run_dir.root})"
                )
            if not verbose:
                say(f"Log:           {run_dir.log_file} (Ray and every worker; -v prints it here too)")
            summary = _train_stages(cfg, run_dir, run_log, train_files, val_files, address)
            print_summary(summary)
    finally:
        upload_log(run_dir)
    return summary.to_json()


def upload_log(run_dir: RunDir) -> None:
    """Upload ``train.log`` to a run in cloud storage; if that fails too (the storage is what
    failed), say so without hiding the error that ended the run."""
    try:
        run_dir.push(run_dir.log_file)
    except StorageError as error:
        say(f"train.log stays at {run_dir.log_file}: {error}")


def _train_stages(
    cfg: Config,
    run_dir: RunDir,
    run_log: RunLog,
    train_files: list[str],
    val_files: list[str],
    address: str | None,
) -> Summary:
    stages = cfg.train.stages
    to_train = unfinished_stages(run_dir, stages)
    for stage in stages[: len(stages) - len(to_train)]:
        say(f"Stage {stage}: already finished, skipping ({run_dir.generator(stage).name})")
    if not to_train:  # nothing left: no Ray needed
        return read_summary(run_dir)
    import ray  # noqa: F401 - gives Ray's driver logger its handlers, which run_log then takes over

    run_log.capture_ray_logger()
    connect_ray(address, cfg.scaling.num_workers, cfg.scaling.cpus_per_worker)
    StopSignals.install()  # again: ray.init replaces the SIGTERM handler with its own sys.exit
    route_ray_output(run_log)
    use_gpu = decide_gpu(cfg.scaling)
    # The run starts here: config.yaml marks the folder as holding a run (a new run with this
    # name then needs --resume), so a failure in pre-flight or while connecting must not write it.
    atomic.write_text(run_dir.config_file, to_yaml(cfg))
    run_dir.push(run_dir.config_file)
    for stage in to_train:
        clear_stops(run_dir, stage)
    # Rank 0 prints each stage's lines; the last one is awaited so that it comes before the summary.
    last_line = run_log.expect_worker_line(done_line_prefix(stages[-1]))
    fit_stages(cfg, run_dir, train_files, val_files, use_gpu)
    check_stages_finished(cfg, run_dir)
    last_line.wait(timeout=5)
    return read_summary(run_dir)
