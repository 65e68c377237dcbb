"""`python launch.py` / `srgan-dist train` flags map onto config keys."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from srgan_dist.commands.train import add_arguments, config_from_args
from srgan_dist.config import ConfigError
from srgan_dist.ray_session import workers_setting

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")


def _config(*argv: str):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(["--config", DEMO, *argv]))


def test_flags_are_shorthands_for_config_keys():
    cfg = _config("--name", "x4-run", "--storage", "/shared/runs", "--workers", "3", "srresnet.iterations=7")
    assert (cfg.run.name, cfg.run.storage, cfg.srresnet.iterations) == ("x4-run", "/shared/runs", 7)
    assert (cfg.scaling.num_workers, cfg.scaling.min_workers) == (3, 0)
    assert workers_setting(cfg.scaling) == 3


def test_workers_range_makes_an_elastic_run():
    cfg = _config("--workers", "1-2")
    assert (cfg.scaling.min_workers, cfg.scaling.num_workers) == (1, 2)
    assert workers_setting(cfg.scaling) == (1, 2)


@pytest.mark.parametrize("text", ["two", "2-", "-2", "1-2-3", "3-1"])
def test_bad_worker_counts_name_the_flag_or_key(text):
    with pytest.raises(ConfigError, match=r"--workers|scaling\.min_workers"):
        _config("--workers", text)
