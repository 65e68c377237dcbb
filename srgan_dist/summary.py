"""``summary.json``: one entry per finished stage, written by rank 0 when the stage ends.

A stage counts as finished when its entry says ``completed`` and its exported generator exists
(:func:`stage_finished`); a finished stage is never trained again, by a restarted worker group
or by a ``--resume``. The file is rewritten whole through a temporary name, so readers never see
half of it.
"""

from __future__ import annotations

import json
from typing import Any

from srgan_dist.config import Config
from srgan_dist.rundir import RunDir, generator_file_name


def load_summary(run_dir: RunDir) -> dict[str, Any]:
    path = run_dir.summary_file
    return json.loads(path.read_text()) if path.is_file() else {"stages": {}}


def write_summary(run_dir: RunDir, summary: dict[str, Any]) -> None:
    tmp = run_dir.summary_file.with_name(run_dir.summary_file.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(run_dir.summary_file)
    run_dir.push(run_dir.summary_file)


def stage_finished(summary: dict[str, Any], run_dir: RunDir, stage: str) -> bool:
    return bool(summary["stages"].get(stage, {}).get("completed")) and run_dir.generator(stage).is_file()


def stage_summary(cfg: Config, stage: str, metrics: dict[str, Any], wall_time_s: float) -> dict[str, Any]:
    """A stage's entry, from its final metrics (``StageTrainer.final_metrics`` and validation)."""
    return {
        "completed": True,
        "steps": int(metrics.get("step", cfg.stage(stage).iterations)),
        "wall_time_s": round(wall_time_s, 2),
        "train_time_s": round(float(metrics.get("train_time_s", 0.0)), 2),
        "samples_per_s": round(float(metrics.get("samples_per_s", 0.0)), 2),
        "workers": int(metrics.get("world_size", cfg.scaling.num_workers)),
        "val_psnr": metrics.get("val/psnr"),
        "val_ssim": metrics.get("val/ssim"),
        "val_psnr_bicubic": metrics.get("val/psnr_bicubic"),
        **({"val_psnr_raw": metrics["val/psnr_raw"]} if "val/psnr_raw" in metrics else {}),
        "val_ssim_bicubic": metrics.get("val/ssim_bicubic"),
        "generator": generator_file_name(stage),
    }


def record_stage(run_dir: RunDir, stage: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Add ``stage``'s entry to ``summary.json`` (keeping the other stages'); return the summary."""
    summary = load_summary(run_dir)
    summary["run"] = {"name": run_dir.name, "run_dir": run_dir.location}
    summary["stages"][stage] = entry
    write_summary(run_dir, summary)
    return summary
