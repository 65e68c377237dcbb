"""The job request `srgan-dist submit` sends and the job client, checked without a cluster."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from srgan_dist import jobs
from srgan_dist.cli import main
from srgan_dist.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_workers_take_a_count_or_an_elastic_range():
    assert jobs.parse_workers("4") == 4
    assert jobs.parse_workers("1-2") == (1, 2)
    for bad in ("0", "2-1", "x", "1-", "0-3"):
        with pytest.raises(jobs.JobError):
            jobs.parse_workers(bad)


def test_submission_id_is_the_run_name_plus_a_timestamp():
    first = jobs.submission_id_for("demo", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc))
    again = jobs.submission_id_for("demo", dt.datetime(2026, 1, 2, 3, 4, 6, tzinfo=dt.timezone.utc))
    assert first == "demo-20260102-030405"
    assert again != first  # resubmitting the same run gets a new job id
    assert jobs.submission_id_for("my run/1").startswith("my-run-1-")


def test_storage_must_be_absolute_or_a_uri():
    assert jobs.check_storage("/shared/runs/") == "/shared/runs"
    assert jobs.check_storage("s3://bucket/runs") == "s3://bucket/runs"
    with pytest.raises(jobs.JobError, match="absolute path"):
        jobs.check_storage("runs")


def test_training_job_runs_launch_py_on_the_cluster_with_the_project_uploaded(tmp_path):
    request = jobs.build_training_job(
        config=str(ROOT / "configs" / "demo.yaml"),
        options=jobs.JobOptions(working_dir=ROOT),
        name="demo",
        storage=str(tmp_path / "runs"),
        workers="1-2",
        resume=True,
        overrides=["srresnet.iterations=4", "scaling.placement_strategy=SPREAD"],
    )
    args = shlex.split(request.entrypoint)
    assert args[:4] == ["python", "launch.py", "--address", "auto"]
    assert args[args.index("--config") + 1] == "configs/demo.yaml"  # relative to the upload
    assert args[args.index("--name") + 1] == "demo"
    assert args[args.index("--storage") + 1] == str(tmp_path / "runs")
    assert args[args.index("--workers") + 1] == "1-2"
    assert "--resume" in args
    assert args[-2:] == ["srresnet.iterations=4", "scaling.placement_strategy=SPREAD"]
    assert request.submission_id.startswith("demo-")
    assert request.run_dir == f"{tmp_path}/runs/demo"
    assert request.metadata[jobs.META_RUN_DIR] == request.run_dir
    env = request.runtime_env
    assert env["working_dir"] == str(ROOT)
    assert {".git", ".venv", "/runs", "/data"} <= set(env["excludes"])
    assert "pip" not in env  # a cluster with the project installed needs no pip
    assert env["env_vars"]["PYTHONUNBUFFERED"] == "1"
    # No entrypoint resources: the job server runs the driver on the head node.
    assert request.entrypoint_num_cpus == 0 and request.entrypoint_resources == {}


def test_training_job_checks_the_config_before_uploading_anything(tmp_path):
    with pytest.raises(ConfigError, match=r"srresnet\.iterations"):
        jobs.build_training_job(
            config=str(ROOT / "configs" / "demo.yaml"),
            options=jobs.JobOptions(working_dir=ROOT),
            storage=str(tmp_path),
            overrides=["srresnet.iterations=-1"],
        )
    with pytest.raises(jobs.JobError, match="absolute"):  # demo.yaml's storage is relative
        jobs.build_training_job(
            config=str(ROOT / "configs" / "demo.yaml"), options=jobs.JobOptions(working_dir=ROOT)
        )


def test_runtime_env_file_pip_and_env_vars_are_merged():
    base = jobs.load_runtime_env_file(ROOT / "cluster" / "runtime_env.yaml")
    env = jobs.build_runtime_env(
        working_dir=ROOT, base=base, pip=["tqdm==4.67.1"], env_vars={"NCCL_DEBUG": "WARN"}
    )
    assert env["pip"] == ["tqdm==4.67.1"]
    assert env["env_vars"] == {"PYTHONUNBUFFERED": "1", "NCCL_DEBUG": "WARN"}
    assert set(base["excludes"]) <= set(env["excludes"])


def test_command_job_runs_any_command_in_the_project():
    request = jobs.build_command_job(
        entrypoint="python cluster/check_cluster.py",
        name="check",
        options=jobs.JobOptions(working_dir=ROOT, submission_id="check-1", entrypoint_num_cpus=1),
    )
    assert request.entrypoint == "python cluster/check_cluster.py"
    assert request.submission_id == "check-1"
    assert request.entrypoint_num_cpus == 1
    assert request.runtime_env["working_dir"] == str(ROOT)
    assert request.run_dir == "" and jobs.META_RUN_DIR not in request.metadata


def test_cli_help_and_bad_arguments_need_no_ray():
    code = (
        "import sys; from srgan_dist.cli import build_parser, main; build_parser();"
        "rc = main(['submit', '--config', 'configs/demo.yaml', '--storage', 'runs']);"
        "assert 'ray' not in sys.modules, 'ray imported'; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "absolute path" in result.stderr
    for command in ("submit", "status", "logs", "stop"):
        help_text = subprocess.run(
            [sys.executable, "-m", "srgan_dist.cli", command, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert help_text.returncode == 0 and "--address" in help_text.stdout


def test_an_explicit_address_beats_ray_address_in_the_environment(monkeypatch):
    """The Jobs SDK lets $RAY_ADDRESS override the address it is given; --address must win."""
    import ray.job_submission
    from ray.dashboard.utils import get_address_for_submission_client

    used = []

    class RecordingClient:  # what the real client would connect to, without a server
        def __init__(self, address):
            used.append(get_address_for_submission_client(address))

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", RecordingClient)
    monkeypatch.setattr(jobs, "join_problem", lambda address: None)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:2")
    jobs.client("http://127.0.0.1:8999")
    assert used == ["http://127.0.0.1:8999"]
    assert os.environ["RAY_ADDRESS"] == "http://127.0.0.1:1"  # put back afterwards
    jobs.client(None)  # no --address: the environment decides, as Ray documents
    assert used[-1] == "http://127.0.0.1:2"


def test_submit_takes_the_job_server_address_from_the_environment_as_status_does(monkeypatch, capsys):
    """``submit``, ``status``, ``logs`` and ``stop`` resolve the address in the Jobs SDK's order:
    ``--address``, ``$RAY_API_SERVER_ADDRESS``, ``$RAY_ADDRESS``, the default."""
    from srgan_dist.cli import main

    asked = []
    monkeypatch.setattr(jobs, "submit", lambda request, address: asked.append(address) or "job-1")
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:2")
    argv = ["submit", "--entrypoint", "true", "--name", "n", "--working-dir", str(ROOT)]
    assert main(argv) == 0
    assert asked == ["http://127.0.0.1:2"]
    assert "Submitted job job-1 to http://127.0.0.1:2" in capsys.readouterr().out
    assert main([*argv, "--address", "http://127.0.0.1:3"]) == 0
    assert asked[-1] == "http://127.0.0.1:3"


def test_a_failed_job_server_request_is_a_job_error_and_other_runtime_errors_are_not(monkeypatch, capsys):
    """The Jobs SDK raises a failed HTTP request as a bare ``RuntimeError``: the job client makes
    it a ``JobError``, which ``status`` prints in one line; any other error is not hidden."""
    from srgan_dist.cli import main

    class Client:
        def __init__(self, error: Exception):
            self.error = error

        def get_job_info(self, job_id):
            raise self.error

    monkeypatch.setattr(
        jobs, "client", lambda address: Client(RuntimeError("Request failed with status code 404"))
    )
    with pytest.raises(jobs.JobError, match="status code 404"):
        jobs.job_info("nope")
    assert main(["status", "nope"]) == 1
    assert capsys.readouterr().err.strip() == "srgan-dist status: Request failed with status code 404"

    monkeypatch.setattr(jobs, "client", lambda address: Client(NotImplementedError("a bug")))
    with pytest.raises(NotImplementedError):  # a RuntimeError subclass: not the SDK's request failure
        main(["status", "nope"])


def test_every_training_flag_of_submit_reaches_the_jobs_launch_py_unchanged(monkeypatch, tmp_path):
    """``submit`` and ``train`` share ``TRAINING_FLAGS``: what submit is given, the job's
    ``launch.py`` parses back to the same values."""
    import argparse

    from srgan_dist.cli import main
    from srgan_dist.commands.train import add_arguments, training_flag_values

    submitted = []
    monkeypatch.setattr(jobs, "submit", lambda request, address: submitted.append(request) or "job-1")
    given = ["--name", "n", "--storage", str(tmp_path), "--workers", "1-2", "--resume", "-v"]
    argv = ["submit", "--config", str(ROOT / "configs" / "demo.yaml"), "--working-dir", str(ROOT), *given]
    assert main([*argv, "srresnet.iterations=4"]) == 0
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    job_args = parser.parse_args(shlex.split(submitted[0].entrypoint)[2:])
    assert training_flag_values(job_args) == {
        "name": "n", "storage": str(tmp_path), "workers": "1-2", "resume": True, "verbose": True,
    }  # fmt: skip
    assert (job_args.address, job_args.overrides) == ("auto", ["srresnet.iterations=4"])


def test_the_upload_keeps_every_file_of_the_package_and_drops_local_data_and_runs():
    """The job imports srgan_dist from the uploaded working dir: an exclude that matched
    ``srgan_dist/data/`` (as an unanchored ``data`` did) breaks every job on a cluster whose
    image has the package installed."""
    import yaml
    from ray._private.runtime_env.packaging import _get_excludes

    for excludes in (
        list(jobs.WORKING_DIR_EXCLUDES),
        yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())["excludes"],
    ):
        excluded = _get_excludes(ROOT, excludes)
        package = [path for path in (ROOT / "srgan_dist").rglob("*.py") if "__pycache__" not in path.parts]
        assert package and not [path for path in package if excluded(path)]
        assert not excluded(ROOT / "launch.py") and not excluded(ROOT / "configs" / "demo.yaml")
        for local in ("data/sample/train/a.png", "runs/demo/config.yaml"):
            assert excluded(ROOT / local), local


def test_a_secret_handed_to_a_job_is_refused_by_name_without_its_value(tmp_path, capsys):
    """Ray writes a job's runtime env, values included, into runtime_env_agent.log on every node."""
    secret = "wJalrXUtnFEMI-not-real"
    for pair in (f"AWS_SECRET_ACCESS_KEY={secret}", f"HF_TOKEN={secret}", f"db_password={secret}", secret):
        argv = [
            "submit",
            "--entrypoint",
            "true",
            "--name",
            "n",
            "--working-dir",
            str(tmp_path),
            "--env",
            pair,
        ]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert secret not in err and len(err.strip().splitlines()) == 1, err
        if "=" in pair:
            assert pair.partition("=")[0] in err and "Ray writes a job's environment" in err
    # Paths to credentials are not credentials: AWS_SHARED_CREDENTIALS_FILE, TOKENIZER_PATH pass.
    jobs.refuse_secret_env_vars(
        {"AWS_SHARED_CREDENTIALS_FILE": "/x", "TOKENIZER_PATH": "/y", "AWS_PROFILE": "p"}
    )
