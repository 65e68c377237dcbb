"""The ``srgan-dist`` console script frame: every user command is there, with --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from srgan_dist.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "submit", "upscale", "evaluate", "export", "prepare", "sample-data", "tensorboard")


def test_help_lists_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "srgan_dist.cli", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ")}
    assert set(COMMANDS) <= listed


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    assert f"srgan-dist {command}" in capsys.readouterr().out


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_the_parser_imports_no_heavy_library() -> None:
    """``--help`` stays fast: building the parser must not import torch, Ray or DALI."""
    code = (
        "import sys; from srgan_dist.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'ray', 'nvidia.dali', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
