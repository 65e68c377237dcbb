"""``train``: run every stage of a config (``python launch.py`` is the same command).

    python launch.py --config configs/demo.yaml --name demo
    python launch.py --config configs/div2k_x4.yaml --workers 8 --address auto \\
        data.train=/data/DF2K_sub data.val=/data/DIV2K_valid_HR
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingFlag:
    """A flag of ``launch.py`` that ``submit`` takes too and passes on to the job's ``launch.py``."""

    names: tuple[str, ...]
    help: str
    metavar: str | None = None
    switch: bool = False
    """An on/off flag (``store_true``) rather than one that takes a value."""

    @property
    def dest(self) -> str:
        """The argparse destination, also the keyword ``jobs.build_training_job`` takes it by."""
        return self.names[0].removeprefix("--").replace("-", "_")


# The training flags of `train` (launch.py) and `submit`: one definition for both parsers and for
# the job's command line (``training_flag_values`` -> ``jobs.build_training_job``).
TRAINING_FLAGS = (
    TrainingFlag(("--name",), "run name (run.name, default: the config's): the folder <storage>/<name>/"),
    TrainingFlag(
        ("--storage",),
        "storage root (run.storage): local or shared path, or s3://bucket/prefix or gs://bucket/prefix "
        "(credentials from the environment)",
    ),
    TrainingFlag(
        ("--workers",),
        "Ray Train workers (scaling.num_workers); MIN-MAX for an elastic run that starts with MIN "
        "and grows to MAX (scaling.min_workers)",
        metavar="N|MIN-MAX",
    ),
    TrainingFlag(
        ("--resume",),
        "continue the run of this name: finished stages are skipped, the unfinished one resumes "
        "from its latest checkpoint (a new run is started if none exists)",
        switch=True,
    ),
    TrainingFlag(
        ("--verbose", "-v"),
        "print Ray's logs and every worker's full output too (they always go to <run>/train.log)",
        switch=True,
    ),
)


def add_training_flags(parser: argparse.ArgumentParser, helps: dict[str, str] | None = None) -> None:
    """Add ``TRAINING_FLAGS`` to ``parser``; ``helps`` replaces the help of a flag by its ``dest``."""
    for flag in TRAINING_FLAGS:
        text = (helps or {}).get(flag.dest, flag.help)
        if flag.switch:
            parser.add_argument(*flag.names, action="store_true", help=text)
        else:
            parser.add_argument(*flag.names, metavar=flag.metavar, help=text)


def training_flag_values(args: argparse.Namespace) -> dict[str, str | bool | None]:
    """The ``TRAINING_FLAGS`` values of parsed ``args``, by ``dest``."""
    return {flag.dest: getattr(args, flag.dest) for flag in TRAINING_FLAGS}


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """The ``key.path=value`` config overrides (see ``commands.parse_with_overrides``)."""
    parser.add_argument(
        "overrides", nargs="*", metavar="key.path=value", help="config overrides (anywhere on the line)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML preset, e.g. configs/demo.yaml")
    add_training_flags(parser)
    parser.add_argument(
        "--address",
        help="Ray cluster to join ('auto' inside a cluster job); default: $RAY_ADDRESS, else an embedded local Ray",
    )
    parser.add_argument(
        "--tensorboard", action="store_true", help="also serve the run's TensorBoard on 127.0.0.1:6006"
    )
    add_overrides(parser)


def workers_overrides(text: str) -> list[str]:
    """``"4"`` → a fixed size; ``"2-8"`` → an elastic range."""
    from srgan_dist.config import parse_workers

    workers = parse_workers(text)
    if isinstance(workers, int):
        return [f"scaling.num_workers={workers}", "scaling.min_workers=0"]
    low, high = workers
    return [f"scaling.num_workers={high}", f"scaling.min_workers={low}"]


def config_from_args(args: argparse.Namespace):
    """The config the arguments describe (flags are shorthands for their config keys)."""
    from srgan_dist.config import load_config

    overrides = list(args.overrides)
    if args.name is not None:  # `--name ''` is an error (from the config check), not the default
        overrides.append(f"run.name={args.name}")
    if args.storage is not None:
        overrides.append(f"run.storage={args.storage}")
    if args.workers is not None:
        overrides += workers_overrides(args.workers)
    return load_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    from srgan_dist.driver import RunStopped, run_dir_of, run_training
    from srgan_dist.errors import UserError
    from srgan_dist.storage import StorageError

    server = None
    log_file = None
    try:
        cfg = config_from_args(args)
        log_file = run_dir_of(cfg).log_file
        if args.tensorboard:
            from srgan_dist.commands.tensorboard import start_tensorboard

            server = start_tensorboard(run_dir_of(cfg).root.resolve(), host="127.0.0.1", port=6006)
        run_training(cfg, resume=args.resume, address=args.address, verbose=args.verbose)
    except RunStopped as stopped:
        print(str(stopped), file=sys.stderr)
        return stopped.exit_code
    except (UserError, StorageError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        if log_file is not None and log_file.is_file():
            print(f"Full log: {log_file}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.terminate()
    return 0


def setup_logging(args: argparse.Namespace) -> None:
    from srgan_dist.console import configure_logging

    configure_logging(args.verbose)


def register(subparsers) -> None:
    text = "Train SRResNet then SRGAN on Ray Train workers (same as python launch.py)"
    parser = subparsers.add_parser("train", help=text, description=text)
    add_arguments(parser)
    parser.set_defaults(func=run, setup_logging=setup_logging)


def main(argv: list[str] | None = None) -> int:
    """``python launch.py ...``"""
    from srgan_dist.commands import parse_with_overrides

    parser = argparse.ArgumentParser(prog="launch.py", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parse_with_overrides(parser, argv)
    setup_logging(args)
    return run(args)
