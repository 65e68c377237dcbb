"""What a training run prints, and where everything else goes.

By default the console of ``python launch.py`` / ``srgan-dist train`` (and so the log of a
submitted job) shows only lines a person acts on:

- the driver's own lines, written with :func:`say` (pre-flight, stage headers, summary, errors);
- rank 0's progress and validation lines, which ``srgan_dist.monitor`` writes to the worker's
  **stdout** (see ``monitor.console_logger``);
- warnings of the driver process (outside Ray's own logger);
- the raylet's and the autoscaler's messages, as Ray prints them (none on a healthy local run).

Everything, including Ray's driver-side logs and the full stdout/stderr of every Ray worker,
controller and helper actor, goes to ``<run>/train.log`` (``RunDir.log_file``). ``verbose=True``
(``--verbose``/``-v``) keeps Ray's console output as it is, and the log file is written too.

Ray offers no public hook for where the driver prints worker output, only on/off
(``ray.init(log_to_driver=...)``), so the driver swaps the printer Ray registers for
:meth:`RunLog.worker_output`, which writes every line to the log file and prints worker
*stdout* only. Worker stderr carries everything else (Python logging, Ray Train's included,
C++ logs, torch hub downloads), so no text patterns are needed. This module imports no Ray.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

CONSOLE_LOGGER = "srgan_dist.console"
_WORKER_LINES_LOCK = threading.Lock()
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at emit time (pytest's capture, a redirect)."""

    stream_name = "stdout"

    def __init__(self) -> None:
        super().__init__(getattr(sys, self.stream_name))
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):  # logging.StreamHandler writes to self.stream
        return getattr(sys, self.stream_name)

    @stream.setter
    def stream(self, value) -> None:
        pass


def _console_logger() -> logging.Logger:
    logger = logging.getLogger(CONSOLE_LOGGER)
    if not any(isinstance(h, StdoutHandler) for h in logger.handlers):
        logger.addHandler(StdoutHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False  # the log file is attached to it directly, not through root
    return logger


def say(text: str) -> None:
    """A line of the driver's console (stdout), also written to the run's log file."""
    _console_logger().info(text)


class StderrHandler(StdoutHandler):
    """Writes to whatever ``sys.stderr`` is at emit time."""

    stream_name = "stderr"


def configure_logging(verbose: bool) -> None:
    """The CLI's logging: records at INFO reach the run's log file; the console shows warnings
    (everything at INFO with ``verbose``). Calling it again replaces what it set up."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)
    handler = StderrHandler()
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter(FILE_FORMAT if verbose else "%(levelname)s: %(message)s"))
    root.addHandler(handler)
    _console_logger()


class _Forward(logging.Handler):
    """Hands records to ``target``. For Ray's logger: ``ray.init`` re-formats every handler it
    has (``logging_format``), and the run's file keeps one format."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


class _LogFile(logging.FileHandler):
    """The run's log file. A write that fails (a full disk) is said once on stderr instead of
    the traceback ``logging`` prints for every record; the console goes on."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, mode="a", encoding="utf-8")
        self.failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            self.note_failure(error)
        else:  # a record that cannot be formatted: logging's own report
            super().handleError(record)

    def note_failure(self, error: OSError) -> None:
        if not self.failed:
            self.failed = True
            reason = error.strerror or str(error)
            sys.stderr.write(
                f"{self.baseFilename}: cannot write the run's log ({reason}); later lines are not in it\n"
            )


class RunLog:
    """The run's log file, for the duration of a ``with`` block; see the module docstring.

    The driver hands it Ray's logger and worker output (``driver.route_ray_output``).
    """

    def __init__(self, path: Path, verbose: bool) -> None:
        self.path = path
        self.verbose = verbose
        self._file: _LogFile | None = None
        self._ray_file: logging.Handler | None = None
        self._ray_handlers: list[logging.Handler] = []
        self._root_level = logging.NOTSET
        self._awaited: tuple[str, threading.Event] | None = None

    def __enter__(self) -> RunLog:
        self._file = _LogFile(self.path)
        self._file.setFormatter(logging.Formatter(FILE_FORMAT))
        self._file.setLevel(logging.INFO)
        root = logging.getLogger()
        self._root_level = root.level
        root.setLevel(min(root.level, logging.INFO))  # the file wants INFO (the CLI sets that anyway)
        root.addHandler(self._file)
        self._ray_file = _Forward(self._file)
        _console_logger().addHandler(self._file)
        return self

    def capture_ray_logger(self) -> None:
        """Ray's driver-side ``ray`` logger (call once Ray is imported: the import gives it its
        console handler). It does not propagate, so it gets the file here, and in quiet mode only
        the file: its start-up, token and connection messages are not for the console."""
        ray_logger = logging.getLogger("ray")
        if self._ray_file in ray_logger.handlers:
            return
        self._ray_handlers = list(ray_logger.handlers)
        if not self.verbose:
            for handler in self._ray_handlers:
                ray_logger.removeHandler(handler)
        ray_logger.addHandler(self._ray_file)

    def worker_output(self, data: dict[str, Any], ray_printer: Callable[[dict[str, Any]], None]) -> None:
        """One batch of lines Ray streamed to the driver (its log monitor's record ``data``).

        Workers and actors: every line to the file; on the console, Ray's own printer when
        verbose, else worker stdout only. The raylet's and the autoscaler's messages (a worker
        killed for memory, a resource request no node can meet) keep Ray's own printer, which
        already reduces the autoscaler's to its events.
        """
        if data.get("pid") in ("autoscaler", "raylet"):
            ray_printer(data)
            return
        self._write_worker_lines(data)
        awaited = self._awaited
        if awaited and any(awaited[0] in line for line in data.get("lines", [])):
            awaited[1].set()
        if self.verbose:
            ray_printer(data)
        elif not data.get("is_err"):
            sys.stdout.write("".join(line + "\n" for line in data.get("lines", [])))
            sys.stdout.flush()

    def expect_worker_line(self, text: str) -> threading.Event:
        """An event set once a worker line holding ``text`` reaches the driver (from now on):
        Ray streams worker output with a lag of up to about a second."""
        event = threading.Event()
        self._awaited = (text, event)
        return event

    def _write_worker_lines(self, data: dict[str, Any]) -> None:
        # By path, not through the FileHandler: lines that Ray delivers after the run has ended
        # (its log stream lags by up to a second) still belong in this run's log.
        who = data.get("actor_name") or data.get("task_name") or "worker"
        stream = "stderr" if data.get("is_err") else "stdout"
        now = time.time()  # when the line reached the driver (Ray streams with a lag < 1 s)
        arrived = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
        prefix = f"{arrived} ({who} pid={data.get('pid')} ip={data.get('ip')} {stream}) "
        text = "".join(prefix + line + "\n" for line in data.get("lines", []))
        try:
            with _WORKER_LINES_LOCK, self.path.open("a", encoding="utf-8") as file:
                file.write(text)
        except OSError as error:  # a full disk: said once, the console goes on
            if self._file is not None:
                self._file.note_failure(error)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        ray_logger = logging.getLogger("ray")
        ray_logger.removeHandler(self._ray_file)
        for handler in self._ray_handlers:
            if handler not in ray_logger.handlers:
                ray_logger.addHandler(handler)
        logging.getLogger().removeHandler(self._file)
        logging.getLogger().setLevel(self._root_level)
        _console_logger().removeHandler(self._file)
        try:
            self._file.close()
        except OSError as error:  # its last lines could not be flushed (a full disk)
            self._file.note_failure(error)
        self._file = None
