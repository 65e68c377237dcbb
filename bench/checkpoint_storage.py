"""Checkpoint save and restore time of the paper-size model, and the training stall per
checkpoint with synchronous and asynchronous upload: a local disk vs an S3 server.

    python bench/checkpoint_storage.py                # 3 repeats, prints the tables
    python bench/checkpoint_storage.py --write        # and makes them BENCHMARKS.md's section

The checkpoint is a real ``StageTrainer`` checkpoint of the srgan stage of
``configs/div2k_x4.yaml`` (16-block generator, 64-channel discriminator, their Adam states after
one update, the generator EMA): what a run writes at each ``checkpoint_interval``.

- save: ``checkpoint.save_checkpoint`` into a temporary folder (torch.save, sha256 manifest),
  then the copy into storage (``checkpoint.publish_checkpoint``, file by file, the manifest last);
- restore: what a resuming worker does (``checkpoint.load_newest_good``: list the stage folder,
  download the newest checkpoint, verify its manifest, ``torch.load``) and
  ``StageTrainer.load_state_dict``;
- stall: how long ``StageCheckpoints.save`` holds the training thread, with
  ``train.checkpoint_upload`` ``sync`` and ``async``, and when the checkpoint is stored. Its
  ``report`` does with the upload what Ray Train 2.60's ``ray.train.report`` does with
  ``checkpoint_upload_fn`` (``ray/train/v2/_internal/execution/context.py``): SYNC calls it in the
  training thread, ASYNC submits it to a one-thread executor; Ray's own part (one actor round trip
  agreeing on the folder name) is not timed. Each async checkpoint is stored before the next
  starts, as in a run whose checkpoint interval outlasts an upload.

The S3 server is moto's (``moto_server``, another process, on 127.0.0.1): this measures the
protocol and client cost on one machine, not a network or a cloud provider's throughput.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srgan_dist import storage  # noqa: E402
from srgan_dist.config import load_config, to_yaml  # noqa: E402
from srgan_dist.rundir import RunDir  # noqa: E402
from srgan_dist.train import checkpoint as ckpt  # noqa: E402
from srgan_dist.train.trainer import StageTrainer  # noqa: E402

STAGE = "srgan"


def paper_trainer(run_dir: RunDir) -> StageTrainer:
    """The srgan stage of div2k_x4 on the CPU, its optimizers holding state (one zero-grad update)."""
    cfg = load_config(
        ROOT / "configs" / "div2k_x4.yaml", ["loss.vgg_weights=random", "scaling.cpus_per_worker=2"]
    )
    trainer = StageTrainer(
        cfg, STAGE, rank=0, world_size=1, device=torch.device("cpu"), run_dir=run_dir,
        train_files=[], val_files=[], report=lambda *args: None,
    )  # fmt: skip
    trainer.resume(None)
    parts = trainer.trainables
    for model, optimizer in ((parts.generator, parts.optimizer_g), (parts.discriminator, parts.optimizer_d)):
        for parameter in model.parameters():
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()  # Adam's exp_avg / exp_avg_sq exist from the first update on
    return trainer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_s3_server(port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server
        time.sleep(0.2)
    server.kill()
    raise RuntimeError("moto_server did not start")


def time_round_trip(trainer: StageTrainer, stage_dir: str | Path, repeats: int) -> tuple[float, float, float]:
    """Median save and restore seconds, and the checkpoint size in MiB."""
    config_yaml = to_yaml(trainer.cfg)
    saves, restores, size = [], [], 0
    for repeat in range(repeats):
        name = ckpt.checkpoint_dir_name(repeat + 1)
        target = storage.join(stage_dir, name) if isinstance(stage_dir, str) else stage_dir / name
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            ckpt.save_checkpoint(Path(scratch), trainer.state_dict(), STAGE, config_yaml)
            size = sum(path.stat().st_size for path in Path(scratch).iterdir())
            ckpt.publish_checkpoint(Path(scratch), target)
        saves.append(time.perf_counter() - started)

        started = time.perf_counter()
        point = ckpt.load_newest_good(stage_dir, STAGE)
        assert point is not None and point.name == name, point
        trainer.load_state_dict(point.state)
        restores.append(time.perf_counter() - started)
    return statistics.median(saves), statistics.median(restores), size / 2**20


def time_stall(trainer: StageTrainer, run_dir: RunDir, background: bool, repeats: int) -> tuple[float, float]:
    """Median seconds ``StageCheckpoints.save`` blocks training, and until the checkpoint is stored."""
    uploader = ThreadPoolExecutor(max_workers=1)  # Ray Train's checkpoint_upload_threadpool
    pending: list[Future] = []

    def report(metrics, name, upload) -> None:
        if upload.background:
            pending.append(uploader.submit(upload.persist))
        else:
            upload.persist()

    checkpoints = ckpt.StageCheckpoints(
        run_dir, STAGE, trainer.stage_cfg, to_yaml(trainer.cfg), 0, report, background_upload=background
    )
    stalls, stored = [], []
    for repeat in range(repeats):
        trainer.step = 1000 * (repeat + 1)
        started = time.perf_counter()
        checkpoints.save(trainer.state_dict(), {"step": trainer.step})
        stalls.append(time.perf_counter() - started)
        if pending:
            pending.pop().result()
        stored.append(time.perf_counter() - started)
    uploader.shutdown()
    return statistics.median(stalls), statistics.median(stored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="save/restore round trips per target (median)")
    parser.add_argument("--write", action="store_true", help="make the table BENCHMARKS.md's section")
    args = parser.parse_args()
    torch.set_num_threads(2)

    port = free_port()
    server = start_s3_server(port)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    import pyarrow.fs

    endpoint = f"127.0.0.1:{port}"
    pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir(
        "bench"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="ckpt-bench-") as local:  # $TMPDIR, else /tmp
            trainer = paper_trainer(RunDir(Path(local) / "run"))
            s3_runs = f"s3://bench/runs?endpoint_override={endpoint}&scheme=http"
            rows = {
                "local disk": time_round_trip(trainer, Path(local) / "checkpoints", args.repeats),
                "S3 (moto_server, 127.0.0.1)": time_round_trip(
                    trainer, f"s3://bench/run/stage?endpoint_override={endpoint}&scheme=http", args.repeats
                ),
            }
            stalls = {
                (target, mode): time_stall(
                    trainer, RunDir.of(root, f"stall-{mode}"), mode == "async", args.repeats
                )
                for target, root in (("local disk", Path(local)), ("S3 (moto_server, 127.0.0.1)", s3_runs))
                for mode in ("sync", "async")
            }
    finally:
        server.terminate()
        server.wait(timeout=30)

    load = os.getloadavg()
    lines = [
        "| storage | checkpoint | save (write + copy to storage) | restore (list + fetch + verify + load) |",
        "|---|---|---|---|",
    ]
    for target, (save_s, restore_s, size_mib) in rows.items():
        lines.append(f"| {target} | {size_mib:.0f} MiB | {save_s:.2f} s | {restore_s:.2f} s |")
    lines += [
        "",
        "| storage | train.checkpoint_upload | training stall per checkpoint | stored after |",
        "|---|---|---|---|",
    ]
    for (target, mode), (stall_s, stored_s) in stalls.items():
        lines.append(f"| {target} | {mode} | {stall_s:.2f} s | {stored_s:.2f} s |")
    table = "\n".join(lines)
    print(table)
    print(
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min), {os.cpu_count()} cores"
    )
    if args.write:
        sys.path.insert(0, str(ROOT / "bench"))
        from _report import write_section

        command = "python bench/checkpoint_storage.py " + " ".join(sys.argv[1:])
        date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        body = (
            f"`{command.strip()}` ({date}; {os.cpu_count()}-core CPU machine, no GPU; load average "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at its end, its own work included, on a "
            f"machine shared with other jobs; median of {args.repeats})\n\n"
            "A real srgan-stage `StageTrainer` checkpoint of `configs/div2k_x4.yaml` (G 16 blocks, D "
            "64 channels, both Adam states, the generator EMA). The S3 server is moto's on 127.0.0.1 "
            "(another process, in Python): protocol, client and server cost on one machine, not a "
            "network's or a cloud provider's throughput. The stall is how long `StageCheckpoints.save` "
            "holds the training thread (the local write, plus the upload with `sync`); `async` leaves "
            "the upload to Ray Train's upload thread (emulated: see the script's docstring), which "
            "shares the machine's cores and disk with training while it runs.\n\n" + table
        )
        write_section("Checkpoint storage: local disk vs S3", body)


if __name__ == "__main__":
    main()
