"""bench/gpu_train.py without a GPU: it refuses clearly, and its report computes the right ratios."""

from __future__ import annotations

import pytest
import torch
from conftest import load_bench_script


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("gpu_train")


def results(ray: dict | None = None) -> dict:
    rates = {
        ("srresnet", 16, "fp32"): 1000.0, ("srresnet", 16, "bf16+CL"): 1800.0,
        ("srresnet", 64, "fp32"): 1200.0, ("srresnet", 64, "bf16+CL"): 3000.0,
        ("srgan", 16, "fp32"): 300.0, ("srgan", 16, "bf16+CL"): 450.0,
        ("srgan", 64, "fp32"): 400.0, ("srgan", 64, "bf16+CL"): 700.0,
    }  # fmt: skip
    return {
        "steps": [
            {"model": m, "batch": b, "precision": p, "samples_per_s": r} for (m, b, p), r in rates.items()
        ],
        "loader": {"dali_mixed": 4500.0, "pil": 900.0, "threads": 8, "tiles": 160},
        "fidelity": {
            "lr_mean": 0.15,
            "lr_max": 13,
            "decode_fancy_mean": 0.2,
            "decode_fancy_max": 3,
            "decode_plain_mean": 0.9,
            "decode_plain_max": 40,
        },
        "upscale": {
            "output": "1024x1024",
            "cpu_threads": 16,
            "cpu_mp_s": 0.05,
            "gpu_mp_s": 5.0,
            "max_diff": 0.4,
            "max_diff_u8": 1,
        },
        "command": "python bench/gpu_train.py",
        "machine": "GPU X",
        "versions": "v",
        "date": "d",
        "took_s": 200.0,
        **({"ray": ray} if ray else {}),
    }


def test_report_ratios_and_verdicts(bench):
    text = bench.report(results())
    assert "| srresnet | 64 | 1200.0 | 3000.0 | 2.50x (target >= 2x: met) |" in text
    assert "| srresnet | 16 | 1000.0 | 1800.0 | 1.80x |" in text  # no target at batch 16
    assert "| srgan | 64 | 400.0 | 700.0 | 1.75x |" in text
    # the loader against the bf16+CL batch-16 steps: 4500 / 1800 and 4500 / 450
    assert "| DALI mixed | 4500.0 | 2.50x (target >= 2x: met) | 10.00x |" in text
    assert "| PIL DataLoader | 900.0 | 0.50x | 2.00x |" in text
    assert "CUDA 5.00 MP/s" in text and "(100.00x)" in text
    assert "not run (pass `--ray`)" in text
    ray = bench.ray_vs_bare(
        {"srresnet": {"steady_samples_per_s": 900.0}, "srgan": {"steady_samples_per_s": 300.0}},
        {"srresnet": {"steady_samples_per_s": 1000.0}, "srgan": {"steady_samples_per_s": 300.0}},
    )
    missed = bench.report(results(ray=ray))
    assert "900.0 vs 1000.0, Ray / bare 0.90x (target >= 0.95x: MISSED)" in missed
    assert "300.0 vs 300.0, Ray / bare 1.00x (target >= 0.95x: met)" in missed


def test_the_ray_and_bare_rates_are_steady_state_windows(bench):
    """The first window (CUDA init, cuDNN autotuning, the first fused Adam) counts on neither side."""
    assert bench.steady_rate({"perf/samples_per_s": [10.0, 100.0, 104.0, 98.0]}) == 100.0
    with pytest.raises(SystemExit, match="at least 2 logged windows"):
        bench.steady_rate({"perf/samples_per_s": [10.0]})


def test_ratio_and_verdict_handle_missing_numbers(bench):
    assert bench.ratio(None, 2.0) is None and bench.ratio(1.0, 0.0) is None
    assert bench.verdict(None, 2.0) == "n/a"
    assert bench.verdict(2.0, 2.0).endswith("met)")


def test_refuses_without_cuda(bench, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--no-write"]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_help(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0 and "--ray" in capsys.readouterr().out
