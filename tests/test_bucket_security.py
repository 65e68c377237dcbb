"""What a careless or hostile URI, or a bucket's hostile writer, can do to a reader: nothing
outside the folders it belongs to, and no secret echoed. Object keys are checked against moto's
S3 server on 127.0.0.1 (in this process; no Ray)."""

from __future__ import annotations

import pytest
from test_storage import BUCKET, s3_server  # noqa: F401 - the module's S3 server fixture

from srgan_dist import cli, storage
from srgan_dist.errors import UserError
from srgan_dist.rundir import RunDir

SECRET = "wJalrXUtnFEMI-not-real-K7MDENG"


@pytest.mark.parametrize(
    "uri",
    [
        f"s3://AKIAEXAMPLE:{SECRET}@runs/x",
        f"s3://{SECRET}@runs/x",
        f"gs://user:{SECRET}@runs/x",
        f"s3://runs/x?Secret_Key={SECRET}",
        f"s3://runs/x?secret_key={SECRET}&scheme=http",
        f"s3://runs/x?aws_session_token={SECRET}",
        f"gs://runs/x?access_token={SECRET}",
    ],
)
def test_credentials_in_a_uri_are_refused_without_echoing_them(uri, capsys, tmp_path):
    with pytest.raises(UserError, match="carries credentials") as info:
        storage.check_uri(uri)
    assert SECRET not in str(info.value)
    # Through the CLI too: the refusal is one line without the secret, and nothing is written.
    assert cli.main(["train", "--config", "configs/demo.yaml", "--storage", uri, "--name", "n"]) == 2
    captured = capsys.readouterr()
    assert "carries credentials" in captured.err
    assert SECRET not in captured.out + captured.err


def test_unknown_query_parameters_are_refused_by_name_only():
    with pytest.raises(UserError, match=r"unknown query parameter\(s\) colour in the s3:// URI") as info:
        storage.check_uri("s3://runs/x?colour=hunter2")
    assert "hunter2" not in str(info.value)
    storage.check_uri("s3://runs/x?endpoint_override=127.0.0.1:9000&scheme=http&region=eu-west-1")
    storage.check_uri("gs://anonymous@runs/x?scheme=http&endpoint_override=127.0.0.1:4443")


@pytest.mark.parametrize(
    "uri",
    [
        "s3://A/x/../../B/run",
        "s3://A/x/%2e%2e/%2E%2E/B/run",
        "s3://A/x/%252e%252e/B",
        "s3://A/./x",
        "s3://../x",
        "gs://A/x/..",
        "s3://A/x%2F..%2F..%2FB",
    ],
)
def test_dot_segments_in_a_uri_are_refused(uri, tmp_path):
    with pytest.raises(UserError, match=r"'\.' or '\.\.' path segment"):
        storage.check_uri(uri)
    with pytest.raises(UserError):
        storage.working_copy(uri)  # never a local path outside the cache
    with pytest.raises(UserError):
        RunDir.of(uri, "run")


def test_keys_outside_their_folder_are_refused():
    folder = "runs/r/tensorboard"
    assert storage.check_key(f"{folder}/srgan/events.1", folder) == "srgan/events.1"
    for key in (
        f"{folder}/../../../../tmp/x/pwned",
        f"{folder}/a/../../b",
        f"{folder}/./a",
        f"{folder}//a",
        f"{folder}/a\\..\\..\\b",
        "runs/other/file",
        f"{folder}",
    ):
        with pytest.raises(storage.UnsafeObjectKey, match="outside the folder it belongs to"):
            storage.check_key(key, folder)


def put(s3_server, key: str, data: bytes = b"x") -> None:  # noqa: F811
    """Put an object with exactly this key (boto3 sends '..' as written; pyarrow's client would
    normalise the path first)."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=f"http://{s3_server.endpoint}",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    client.put_object(Bucket=BUCKET, Key=key, Body=data)


def test_a_planted_dotdot_key_writes_nothing_outside_the_download(s3_server, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "test")
    victim = tmp_path / "victim"
    depth = len((tmp_path / "cache").parts) + 8  # enough '..' to reach / from the working copy
    run = "evil/run"
    put(s3_server, f"{run}/tensorboard/srgan/events.out.tfevents.1", b"events")
    escape = "/".join([".."] * depth) + str(victim / "pwned")
    put(s3_server, f"{run}/tensorboard/{escape}", b"pwned")
    uri = s3_server.uri(run)
    code = cli.main(["tensorboard", uri])
    err = capsys.readouterr().err
    assert code == 2
    assert "outside the folder it belongs to" in err and len(err.strip().splitlines()) == 1
    assert not (victim / "pwned").exists()
    assert not victim.exists()
    # The checked helper alone: the good file of a clean folder arrives.
    put(s3_server, "clean/run/tensorboard/srgan/events.out.tfevents.2", b"events2")
    target = tmp_path / "copy"
    assert storage.download(s3_server.uri("clean/run/tensorboard"), target)
    assert (target / "srgan" / "events.out.tfevents.2").read_bytes() == b"events2"


def test_a_checkpoint_with_a_planted_key_is_skipped_as_damaged(s3_server, tmp_path, monkeypatch):  # noqa: F811
    from test_checkpoint import write

    from srgan_dist.train import checkpoint as ckpt

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "test")
    local = tmp_path / "stage"
    for step in (2, 4):
        write(local, step)
    stage_uri = s3_server.uri("ckpt/run/run-srresnet")
    storage.upload(local, stage_uri)
    victim = tmp_path / "victim"
    escape = "/".join([".."] * (len(tmp_path.parts) + 8)) + str(victim / "pwned")
    put(s3_server, f"ckpt/run/run-srresnet/step-00000004/{escape}", b"pwned")
    point = ckpt.load_newest_good(stage_uri, "srresnet")
    assert point is not None and point.name == "step-00000002"
    assert len(point.damaged) == 1 and "outside the folder it belongs to" in str(point.damaged[0])
    assert not victim.exists()
