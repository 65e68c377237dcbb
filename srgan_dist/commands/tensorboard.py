"""``tensorboard``: serve a run's TensorBoard logs (one sub-folder per stage).

A run in cloud storage (``s3://...``, ``gs://...``) is served from a copy of its ``tensorboard/``
folder downloaded into the run's local working copy; run the command again for newer events.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from srgan_dist import storage
from srgan_dist.errors import UserError
from srgan_dist.rundir import TENSORBOARD_DIR, RunDir
from srgan_dist.storage import StorageError


def tensorboard_command(run_dir: Path, host: str, port: int) -> tuple[list[str], Path]:
    """The TensorBoard command line for ``<run_dir>/tensorboard`` (or ``run_dir`` itself if it is
    a plain logdir), and that logdir."""
    runs_logdir = RunDir(run_dir).tensorboard_root
    logdir = runs_logdir if runs_logdir.is_dir() or not run_dir.exists() else run_dir
    command = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(logdir),
        "--host",
        host,
        "--port",
        str(port),
    ]
    return command, logdir


def start_tensorboard(run_dir: Path, host: str, port: int) -> subprocess.Popen:
    """Start TensorBoard in the background (``--tensorboard`` of ``train``) and say where it is."""
    command, logdir = tensorboard_command(run_dir, host, port)
    logdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(command)
    print(f"TensorBoard: http://{host}:{port}/  (logdir {logdir})", flush=True)
    return process


def download_events(uri: str) -> Path:
    """Copy ``<uri>/tensorboard`` into the run's local working copy; return that run folder."""
    run_dir = RunDir.at(uri)
    if not run_dir.pull(run_dir.tensorboard_root):
        raise StorageError(
            f"downloading {storage.join(uri, TENSORBOARD_DIR)} failed: nothing there (no events yet?)"
        )
    print(f"Downloaded {storage.join(uri, TENSORBOARD_DIR)} to {run_dir.tensorboard_root}", flush=True)
    return run_dir.root


def run(args: argparse.Namespace) -> int:
    if storage.is_uri(args.run_dir):
        try:
            storage.check_uri(args.run_dir, "run_dir")
            run_dir = download_events(args.run_dir)
        except (UserError, StorageError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    else:
        run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"error: {run_dir} is not a directory", file=sys.stderr)
        return 2
    command, logdir = tensorboard_command(run_dir.resolve(), args.host, args.port)
    print(f"TensorBoard: http://{args.host}:{args.port}/  (logdir {logdir})", flush=True)
    # Become TensorBoard, so stopping this command (Ctrl-C, SIGTERM) stops the server itself.
    os.execv(sys.executable, command)


def register(subparsers) -> None:
    text = "Serve a run's TensorBoard logs (127.0.0.1 unless --host is given)"
    parser = subparsers.add_parser("tensorboard", help=text, description=text)
    parser.add_argument(
        "run_dir",
        help="run directory <storage>/<name>, a path or an s3:// / gs:// URI (or any TensorBoard logdir)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)"
    )
    parser.add_argument("--port", type=int, default=6006)
    parser.set_defaults(func=run)
