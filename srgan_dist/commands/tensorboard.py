"""``tensorboard``: serve a run's TensorBoard logs (one sub-folder per stage).

A run in cloud storage (``s3://...``, ``gs://...``) is served live: its ``tensorboard/`` folder is
copied into this machine's cache (``~/.cache/srgan-dist/tensorboard/<scheme>/<bucket>/<path>``) and
kept in step with the bucket every ``--sync-interval`` seconds while TensorBoard reads the copy.
Each sync lists the folder and reads only what the copy lacks: new event files whole, and the new
bytes of a file that grew (``storage.follow_folder``). The copy is this command's own folder, not
the run's working copy, which rank 0 writes into when the run trains on this machine.

Why a copy rather than TensorBoard reading the bucket itself: TensorBoard 2.21 reads ``s3://``
only through boto3 in its slow Python loader, with the endpoint from ``S3_ENDPOINT`` (a URI's
``?endpoint_override=`` is lost), and ``gs://`` only in its Rust data server, which always talks
to storage.googleapis.com (or, in the Python loader, through gcsfs, which this project does not
install). Syncing through ``pyarrow.fs`` reads both schemes the way training writes them: the
same URI syntax, credentials and endpoint, and the same object-key checks.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from srgan_dist import storage
from srgan_dist.errors import UserError
from srgan_dist.rundir import TENSORBOARD_DIR, RunDir
from srgan_dist.storage import StorageError, UnsafeObjectKey

DEFAULT_SYNC_INTERVAL_S = 5.0


def serve_command(logdir: Path, host: str, port: int, reload_interval_s: float | None = None) -> list[str]:
    """The TensorBoard command line that serves ``logdir``."""
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
    if reload_interval_s is not None:
        command += ["--reload_interval", f"{reload_interval_s:g}"]
    return command


def tensorboard_command(run_dir: Path, host: str, port: int) -> tuple[list[str], Path]:
    """The TensorBoard command line for ``<run_dir>/tensorboard`` (or ``run_dir`` itself if it is
    a plain logdir), and that logdir."""
    runs_logdir = RunDir(run_dir).tensorboard_root
    logdir = runs_logdir if runs_logdir.is_dir() or not run_dir.exists() else run_dir
    return serve_command(logdir, host, port), logdir


def start_tensorboard(run_dir: Path, host: str, port: int) -> subprocess.Popen:
    """Start TensorBoard in the background (``--tensorboard`` of ``train``) and say where it is."""
    command, logdir = tensorboard_command(run_dir, host, port)
    logdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(command)
    print(f"TensorBoard: http://{host}:{port}/  (logdir {logdir})", flush=True)
    return process


class EventsMirror:
    """This machine's copy of a run's ``tensorboard/`` folder in cloud storage, brought up to date
    by :meth:`sync` (new bytes only). ``folder`` is the logdir TensorBoard reads: one sub-folder
    per stage."""

    def __init__(self, run_uri: str) -> None:
        self.uri = storage.join(run_uri, TENSORBOARD_DIR)
        self.folder = storage.working_copy(run_uri, kind="tensorboard")
        self.held: dict[str, int] = {}
        self.bytes_read = 0

    def sync(self) -> int:
        """Copy what the bucket has and this copy lacks; return the bytes read."""
        fetched = storage.follow_folder(self.uri, self.folder, self.held)
        self.bytes_read += fetched
        return fetched


def download_events(run_uri: str) -> Path:
    """Bring this machine's copy of ``<run_uri>/tensorboard`` up to date once; return it (the
    logdir, one sub-folder per stage)."""
    mirror = EventsMirror(run_uri)
    mirror.sync()
    return mirror.folder


def follow_bucket(run_uri: str, host: str, port: int, sync_interval_s: float) -> int:
    """Serve ``<run_uri>/tensorboard`` live: TensorBoard reads the mirror, synced every
    ``sync_interval_s`` seconds until TensorBoard exits or this command is stopped."""
    storage.check_uri(run_uri, "run_dir")
    mirror = EventsMirror(run_uri)
    mirror.sync()  # a refused key, bad credentials or an endpoint that is down stop it here
    if not mirror.held:
        if not storage.exists(run_uri):
            raise StorageError(f"reading {run_uri} failed: nothing there (no run directory at that URI)")
        print(f"No TensorBoard events in {mirror.uri} yet: they appear as the run uploads them", flush=True)
    mirror.folder.mkdir(parents=True, exist_ok=True)
    print(
        f"Following {mirror.uri} into {mirror.folder} every {sync_interval_s:g}s (new bytes only)",
        flush=True,
    )
    process = subprocess.Popen(serve_command(mirror.folder, host, port, reload_interval_s=sync_interval_s))
    # SIGTERM ends this command like Ctrl-C: through the finally below, which stops TensorBoard.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"TensorBoard: http://{host}:{port}/  (logdir {mirror.folder})", flush=True)
    failing = False
    try:
        while True:
            try:
                return process.wait(timeout=sync_interval_s)
            except subprocess.TimeoutExpired:
                pass
            try:
                mirror.sync()
            except UnsafeObjectKey:
                raise
            except StorageError as error:
                if not failing:  # said once per outage, not at every retry
                    print(
                        f"warning: {error}; retrying every {sync_interval_s:g}s", file=sys.stderr, flush=True
                    )
                failing = True
                continue
            if failing:
                print(f"Reading {mirror.uri} again", flush=True)
            failing = False
    except KeyboardInterrupt:
        return 130
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def run(args: argparse.Namespace) -> int:
    if storage.is_uri(args.run_dir):
        try:
            return follow_bucket(args.run_dir, args.host, args.port, args.sync_interval)
        except (UserError, StorageError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"error: {run_dir} is not a directory", file=sys.stderr)
        return 2
    command, logdir = tensorboard_command(run_dir.resolve(), args.host, args.port)
    print(f"TensorBoard: http://{args.host}:{args.port}/  (logdir {logdir})", flush=True)
    # Become TensorBoard, so stopping this command (Ctrl-C, SIGTERM) stops the server itself.
    os.execv(sys.executable, command)


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def register(subparsers) -> None:
    text = "Serve a run's TensorBoard logs (127.0.0.1 unless --host is given)"
    parser = subparsers.add_parser("tensorboard", help=text, description=text)
    parser.add_argument(
        "run_dir",
        help="run directory <storage>/<name>, a path or an s3:// / gs:// URI (or any TensorBoard logdir); "
        "a URI is followed live",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)"
    )
    parser.add_argument("--port", type=int, default=6006)
    parser.add_argument(
        "--sync-interval",
        type=positive_seconds,
        default=DEFAULT_SYNC_INTERVAL_S,
        help=f"with a URI: seconds between looks at the bucket for new events, and TensorBoard's "
        f"reload interval (default {DEFAULT_SYNC_INTERVAL_S:g})",
    )
    parser.set_defaults(func=run)
