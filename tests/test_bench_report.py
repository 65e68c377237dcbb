"""bench/_report.py: every benchmark script rewrites only its own section of BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

from conftest import load_bench_script

_report = load_bench_script("_report")


def test_a_section_is_replaced_in_place_and_others_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(
        "# Benchmarks\n\n## Data\n\nold data\n\n## Upscaling\n\nold upscaling\n\n## Training\n\nkept\n"
    )
    assert _report.write_section("Upscaling", "new\n\n| a |\n", path) == path
    assert path.read_text() == (
        "# Benchmarks\n\n## Data\n\nold data\n\n## Upscaling\n\nnew\n\n| a |\n\n## Training\n\nkept\n"
    )


def test_a_new_section_is_appended_and_a_missing_file_created(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    _report.write_section("Data throughput", "rows", path)
    _report.write_section("Training: Ray overhead", "more rows", path)
    _report.write_section("Data throughput", "rows again", path)
    assert path.read_text() == (
        "# Benchmarks\n\n## Data throughput\n\nrows again\n\n## Training: Ray overhead\n\nmore rows\n"
    )
