"""``tensorboard``: serve a run's TensorBoard logs (one sub-folder per stage)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def start_tensorboard(run_dir: Path, host: str, port: int) -> subprocess.Popen:
    """Start TensorBoard on ``<run_dir>/tensorboard`` in the background and say where it is."""
    logdir = (
        run_dir / "tensorboard" if (run_dir / "tensorboard").is_dir() or not run_dir.exists() else run_dir
    )
    logdir.mkdir(parents=True, exist_ok=True)
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
    process = subprocess.Popen(command)
    print(f"TensorBoard: http://{host}:{port}/  (logdir {logdir})", flush=True)
    return process


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"error: {run_dir} is not a directory", file=sys.stderr)
        return 2
    process = start_tensorboard(run_dir.resolve(), args.host, args.port)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return 0


def register(subparsers) -> None:
    text = "Serve a run's TensorBoard logs (127.0.0.1 unless --host is given)"
    parser = subparsers.add_parser("tensorboard", help=text, description=text)
    parser.add_argument("run_dir", help="run directory <storage>/<name> (or any TensorBoard logdir)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)"
    )
    parser.add_argument("--port", type=int, default=6006)
    parser.set_defaults(func=run)
