"""bench/train_scaling.py's report logic on made-up numbers: ratios, verdicts, CPU shares, and the
sorting of Ray's processes (no Ray, no training, nothing timed)."""

from __future__ import annotations

import pytest
from conftest import load_bench_script


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("train_scaling")


def ray_run(workers: int, step_s: float, cpu_per_step: list[float], cpu: dict, allreduce_ms=None) -> dict:
    return {
        "workers": workers,
        "step_s": step_s,
        "wall_s": 50 * step_s,
        "threads": 1,
        "parameters": 123456,
        "worker_cpu_per_step_s": cpu_per_step,
        "worker_cpu_per_wall": [c / step_s for c in cpu_per_step],
        "allreduce_ms": allreduce_ms,
        "cpu": cpu,
    }


def results(bench) -> dict:
    cpu = {
        bench.WORKERS: 0.45, bench.CONTROLLER: 0.02, "raylet": 0.01, "gcs_server": 0.005,
        "Ray actor SynchronizationActor": 0.005,
        bench.DRIVER: 0.01, bench.OTHERS: 0.0, bench.IDLE: 0.5, bench.STEAL: 0.0,
    }  # fmt: skip
    return {
        "memory": {
            "bare": {"step_s": 0.200},
            "bare_pair": {"step_s": [0.210, 0.220], "samples_per_s": 8 / 0.210 + 8 / 0.220},
            "ray1": ray_run(1, 0.208, [0.200], cpu),
            "ray2": ray_run(2, 0.250, [0.210, 0.230], {**cpu, bench.WORKERS: 0.9, bench.IDLE: 0.05}, 1.5),
            "ray2_pinned": ray_run(2, 0.230, [0.205, 0.215], cpu, 1.25),
        },
        "real": {"bare_step_s": 0.250, "ray1_step_s": 0.275, "ray2_step_s": 0.400},
        "steps": 50,
        "real_steps": 40,
        "batches": 16,
        "command": "python bench/train_scaling.py --write",
        "machine": "x86_64, 2 CPU cores",
        "date": "d",
        "load_before": 0.1,
        "load_after": 0.5,
        "cores": 2,
        "took_s": 230.0,
    }


def test_report_rows_ratios_and_verdicts(bench):
    text = bench.report(results(bench))
    assert "| in memory | bare loop, 1 process | 200 ms | 40.0 | baseline |" in text
    # 2 x 8 samples / 0.25 s = 64 samples/s against 8 / 0.208 = 38.5 samples/s
    assert "| 250 ms | 64.0 | weak scaling 1.66x (target >= 1.8x: MISSED) |" in text
    assert "| 208 ms | 38.5 | overhead 1.04x (target <= 1.05x: met) |" in text
    assert "| 230 ms | 69.6 | weak scaling 1.81x (target >= 1.8x: met) |" in text
    # (8 / 0.21 + 8 / 0.22) / (8 / 0.2) = 1.86
    assert "| 210 ms / 220 ms | 74.5 | 1.86x the bare loop" in text
    assert "| 275 ms | 29.1 | overhead 1.10x (target <= 1.05x: MISSED) |" in text
    # 2 x 8 / 0.4 = 40 samples/s against 8 / 0.275 = 29.1: 1.38x
    assert "| 400 ms | 40.0 | weak scaling 1.38x (target >= 1.8x: MISSED) |" in text
    assert "- command: `python bench/train_scaling.py --write` (took 230 s)" in text


def test_report_cpu_table_and_projection(bench):
    text = bench.report(results(bench))
    assert "| training workers | 45.0 % | 90.0 % | 45.0 % |" in text
    assert "| Train controller | 2.0 % | 2.0 % | 2.0 % |" in text
    # controller + raylet + gcs_server + an actor; groups no run used (dashboard agent, ...) get no row
    assert "| Ray actor SynchronizationActor | 0.5 % | 0.5 % | 0.5 % |" in text
    assert "| **all of Ray's own processes** (all above but the workers) | **4.0 %** |" in text
    assert "dashboard agent" not in text
    assert "| idle | 50.0 % | 5.0 % | 50.0 % |" in text
    assert "| 2 workers | 12.5 s | 0.84 / 0.92 | 210 ms / 230 ms | 250 ms | 1.50 ms |" in text
    assert "all 123,456 gradients" in text
    assert (
        "- 2 workers: the workers got 1.80 of the 2 cores; Ray's own processes took 4% of the machine, "
        "this driver 1%, other jobs 0%, 5% stayed idle. A rank needs 210 / 230 ms of CPU per step and "
        "a step took 250 ms of wall time."
    ) in text
    # 2 x 200 ms / the slower rank's 230 ms
    assert "weak scaling 1.74x (target >= 1.8x: MISSED)." in text


def test_cpu_in_window_interpolates_and_groups(bench):
    samples = [
        (10.0, {"1:raylet": ("raylet", 5.0), "2:w": ("w", 0.0)}),
        (11.0, {"1:raylet": ("raylet", 6.0), "2:w": ("w", 1.0), "3:w": ("w", 7.0)}),
        (12.0, {"1:raylet": ("raylet", 6.5), "2:w": ("w", 2.0), "3:w": ("w", 7.5)}),
    ]
    used = bench.cpu_in_window(samples, 10.5, 11.5)
    assert used["raylet"] == pytest.approx(0.5 + 0.25)
    # pid 2: 1.0 s; pid 3 first read at 11.0, held flat before it: 0.25 s
    assert used["w"] == pytest.approx(1.0 + 0.25)
    # outside the readings every series is held flat: nothing used
    assert bench.cpu_in_window(samples, 12.5, 13.0) == {"raylet": 0.0, "w": 0.0}


def test_machine_shares_name_what_nobody_of_ours_used(bench):
    used = {"raylet": 1.0, bench.WORKERS: 9.0, "busy": 16.0, bench.IDLE: 3.0, bench.STEAL: 1.0}
    shares = bench.machine_shares(used, wall_s=10.0, cores=2)
    assert shares == pytest.approx(
        {"raylet": 0.05, bench.WORKERS: 0.45, bench.IDLE: 0.15, bench.STEAL: 0.05, bench.OTHERS: 0.3}
    )
    assert sum(shares.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("cmdline", "group"),
    [
        (["ray::TrainController.run"], "Train controller"),
        (["ray::RayTrainWorker.init_train_context"], "training workers"),
        (["ray::RayTrainWorker"], "training workers"),
        (["ray::DashboardAgent"], "dashboard agent"),
        (["ray::RuntimeEnvAgent"], "runtime env agent"),
        (["ray::IDLE"], "idle Ray workers"),
        (["ray::PlacementGroupCleaner"], "Ray actor PlacementGroupCleaner"),
        (["/venv/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=/tmp/x/raylet"], "raylet"),
        (["/venv/ray/core/src/ray/gcs/gcs_server", "--log_dir=/tmp/ray"], "gcs_server"),
        # a worker Ray has not renamed yet: its command line names the raylet's socket too
        (["python", "setup_worker.py", "ray/_private/workers/default_worker.py", "--raylet-name=/s/raylet"],
         "idle Ray workers"),
        (["python", "/venv/ray/dashboard/dashboard.py", "--host=127.0.0.1"], "dashboard"),
        (["ray-dashboard-NodeHead-0", "(python -B -c from multiprocessing.forkserver import main)"], "dashboard"),
        (["python", "-u", "/venv/ray/dashboard/agent.py"], "dashboard agent"),
        (["python", "-u", "/venv/ray/_private/log_monitor.py"], "log monitor"),
        (["python", "-u", "/venv/ray/autoscaler/_private/monitor.py"], "autoscaler monitor"),
        (["python", "-B", "-c", "from multiprocessing.resource_tracker import main;main(5)"], None),
    ],
)  # fmt: skip
def test_process_group(bench, cmdline, group):
    assert bench.process_group(cmdline, "python") == group


def test_every_group_the_sorter_names_has_a_row(bench):
    named = {"Train controller", "training workers", "dashboard agent", "runtime env agent"}
    named |= {"idle Ray workers", "raylet", "gcs_server", "dashboard"}
    named |= {"log monitor", "autoscaler monitor"}
    assert named <= {bench.WORKERS, *bench.RAY_GROUPS}


def test_bad_arguments_are_refused_before_anything_runs(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--steps", "0"])
    assert exit_info.value.code == 2 and "--steps must be >= 1" in capsys.readouterr().err


def test_one_core_is_refused(bench, monkeypatch, capsys):
    monkeypatch.setattr(bench, "usable_cores", lambda: [0])
    with pytest.raises(SystemExit) as exit_info:
        bench.main([])
    assert exit_info.value.code == 2 and "needs at least 2 CPU cores" in capsys.readouterr().err
