"""TensorBoard uploads of a run in cloud storage: bytes uploaded against the final size of
``tensorboard/`` in the bucket.

    python bench/tensorboard_uploads.py              # ~10 min on 2 cores; prints the tables
    python bench/tensorboard_uploads.py --write      # and makes it BENCHMARKS.md's section
    python bench/tensorboard_uploads.py --steps 40   # a quick look

The S3 server is moto's, in this process, behind ``tests/conftest.py``'s ``CountingS3Server``:
it counts the body bytes of every request it receives for each object (parts and the multipart
upload's closing request included), so what is measured is what crossed the wire, not what the
code under test believes it sent.

1. A demo-like run: ``python launch.py --config configs/demo.yaml`` (both stages, 2 workers on
   the CPU, the sample photos, a random VGG so nothing is downloaded) with ``--storage`` in the
   bucket, a log step every 5 steps, validation with its image grid every 50 and
   ``monitor.upload_interval_s=5`` (a short run's stand-in for a long run's 30 s).
2. The same kind of writes replayed through ``srgan_dist.monitor.Monitor`` alone (a dozen
   scalars per log step, an image grid and an upload at each validation), three ways: the
   scheme this replaced (the whole folder uploaded after every write), and the monitor's uploads
   at every write and at most every second.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _report import write_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import CountingS3Server, make_photo  # noqa: E402

from srgan_dist.rundir import RunDir  # noqa: E402

SECTION = "TensorBoard uploads to cloud storage"
TARGET_RATIO = 1.5  # bytes uploaded / final size of tensorboard/, at most


def tensorboard_bytes(server: CountingS3Server, prefix: str) -> dict:
    """What the server received for ``<prefix>/tensorboard`` and what it holds there now."""
    final = server.sizes(f"{prefix}/tensorboard")
    uploaded = server.traffic.received_under(f"{server.bucket}/{prefix}/tensorboard/")
    folder = sum(final.values())
    return {"uploaded": uploaded, "final": folder, "files": len(final), "ratio": uploaded / folder}


def training_run(server: CountingS3Server, work: Path, steps: int) -> dict:
    """The demo-like run of the module docstring; its TensorBoard bytes and wall time."""
    from srgan_dist.data.prepare import write_sample_data

    write_sample_data(work / "sample")
    command = [
        sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "configs" / "demo.yaml"),
        "--name", "demo", "--storage", server.uri("training"),
        f"data.train={work / 'sample' / 'train'}", f"data.val={work / 'sample' / 'val'}",
        "loss.vgg_weights=random", "monitor.upload_interval_s=5",
        f"srresnet.iterations={steps}", "srresnet.log_interval=5", "srresnet.val_interval=50",
        "srresnet.checkpoint_interval=100", f"srgan.iterations={max(steps // 10, 2)}",
        "srgan.log_interval=2", "srgan.val_interval=10", "srgan.checkpoint_interval=10",
        f"srgan.lr_milestones=[{max(steps // 20, 1)}]",
    ]  # fmt: skip
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "XDG_CACHE_HOME": str(work / "cache"),
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="tbb-", dir="/tmp"),  # unix socket paths stay short
    }
    started = time.perf_counter()
    process = subprocess.run(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wall_s = time.perf_counter() - started
    if process.returncode != 0:
        sys.stdout.write(process.stdout[-6000:])
        raise SystemExit(f"the training run failed (status {process.returncode})")
    return {**tensorboard_bytes(server, "training/demo"), "wall_s": wall_s, "steps": steps}


def replay(server: CountingS3Server, work: Path, name: str, log_steps: int, scheme: str) -> dict:
    """``log_steps`` log steps (12 scalars each) with a validation (a 384x512 grid, 2 scalars,
    an upload) every 50, through the monitor of a run at ``<bucket>/<name>``, uploading as
    ``scheme`` says: ``before`` (the whole folder after every write), ``every-write``, ``1s``."""
    import torch

    from srgan_dist.monitor import Monitor

    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    run_dir = RunDir.at(server.uri(name))
    log_dir = run_dir.tensorboard("srresnet")
    log_dir.mkdir(parents=True)
    grid = torch.from_numpy(make_photo((512, 384), seed=3)).permute(2, 0, 1).float() / 255
    if scheme == "before":
        monitor = Monitor(log_dir, "srresnet", log_steps, 0)
        after_write = lambda: run_dir.push(log_dir)  # noqa: E731 - the former on_flush
    else:
        interval = 1e-9 if scheme == "every-write" else 1.0
        monitor = Monitor(log_dir, "srresnet", log_steps, 0, upload=run_dir.push, upload_interval_s=interval)
        after_write = lambda: None  # noqa: E731
    started = time.perf_counter()
    for step in range(1, log_steps + 1):
        monitor.scalars(step, {f"loss/term{i}": 1.0 / step + i for i in range(12)})
        after_write()
        if step % 50 == 0:
            monitor.images(step, "val/bicubic_sr_hr", grid)
            after_write()
            monitor.scalars(step, {"val/psnr": 30.0, "val/psnr_bicubic": 29.0})
            after_write()
            monitor.upload_events()
        time.sleep(0.005)
    monitor.close()
    after_write()
    return {
        **tensorboard_bytes(server, name),
        "wall_s": time.perf_counter() - started,
        "log_steps": log_steps,
    }


def megabytes(count: int) -> str:
    return f"{count / 1e6:.2f} MB"


def report(results: dict) -> str:
    run = results["training"]
    lines = [
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}  ",
        f"Date: {results['date']}",
        "",
        f"Goal: bytes uploaded for TensorBoard <= {TARGET_RATIO}x the final size of `tensorboard/` in the bucket.",
        "",
        "| what | uploaded | final `tensorboard/` | files | uploaded / final |",
        "|---|---:|---:|---:|---:|",
        f"| demo-like run ({run['steps']} + {max(run['steps'] // 10, 2)} steps, 2 workers, "
        f"{run['wall_s']:.0f} s) | {megabytes(run['uploaded'])} | {megabytes(run['final'])} | "
        f"{run['files']} | **{run['ratio']:.3f}** |",
    ]
    for label, key in (
        ("replay: whole folder after every write (before)", "before"),
        ("replay: monitor, upload at every write", "every-write"),
        ("replay: monitor, at most every 1 s", "1s"),
    ):
        row = results[key]
        lines.append(
            f"| {label}, {row['log_steps']} log steps | {megabytes(row['uploaded'])} | "
            f"{megabytes(row['final'])} | {row['files']} | {row['ratio']:.3f} |"
        )
    lines += [
        "",
        "Each upload closes the events file and uploads only files that are new, so every byte",
        "goes up once; what is above 1.000 is the request that completes each multipart upload",
        "(about 240 bytes per file). The scheme this replaced uploaded the whole growing folder",
        "after every write: quadratic in the run's length. Wall times are of a machine shared",
        "with other jobs; only the bytes are the measurement.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="srresnet steps of the training run")
    parser.add_argument("--log-steps", type=int, default=400, help="log steps of each replay")
    parser.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.steps < 20 or args.log_steps < 50:
        parser.error("--steps must be >= 20 and --log-steps >= 50")
    work = Path(tempfile.mkdtemp(prefix="srgan-tb-uploads-"))
    server = CountingS3Server("bench")
    results: dict = {}
    for scheme in ("before", "every-write", "1s"):
        results[scheme] = replay(server, work / scheme, f"replay-{scheme}", args.log_steps, scheme)
        print(f"replay {scheme}: {results[scheme]}", flush=True)
    results["training"] = training_run(server, work, args.steps)
    print(f"training run: {results['training']}", flush=True)
    server.stop()
    results["command"] = "python bench/tensorboard_uploads.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    results["machine"] = f"{platform.node()}, {os.cpu_count()} CPU cores, {platform.platform()}"
    results["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    text = report(results)
    print(text)
    if args.write:
        print(f"wrote {write_section(SECTION, text)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
